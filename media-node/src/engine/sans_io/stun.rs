//! Just enough STUN to route a datagram from an address the engine has not seen yet: whether
//! it is a STUN message (RFC 5389 header and magic cookie) and, for a Binding request, the
//! local ICE username fragment in its USERNAME attribute (`<our ufrag>:<their ufrag>`). The
//! connection it names checks the rest (MESSAGE-INTEGRITY) itself.

const HEADER: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const USERNAME: u16 = 0x0006;

/// The local (first) ufrag of a STUN Binding request's USERNAME; None for anything else,
/// including a truncated or malformed message.
pub fn binding_request_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < HEADER || datagram[0] & 0xc0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if kind != BINDING_REQUEST || HEADER + length > datagram.len() || length % 4 != 0 {
        return None;
    }
    let mut attributes = &datagram[HEADER..HEADER + length];
    while attributes.len() >= 4 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let len = usize::from(u16::from_be_bytes([attributes[2], attributes[3]]));
        let value = attributes.get(4..4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        let padded = 4 + len.div_ceil(4) * 4;
        attributes = attributes.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute after it, as browsers send.
        attr.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let mut msg = Vec::new();
        msg.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn finds_the_local_ufrag_of_a_binding_request() {
        assert_eq!(binding_request_ufrag(&binding(b"abcd:wxyz")), Some("abcd"));
        assert_eq!(binding_request_ufrag(&binding(b"abcde:w")), Some("abcde"));
    }

    #[test]
    fn refuses_what_is_not_a_well_formed_binding_request() {
        let good = binding(b"abcd:wxyz");
        assert_eq!(
            binding_request_ufrag(&good[..good.len() - 4]),
            None,
            "truncated"
        );
        let mut response = good.clone();
        response[1] = 0x01; // 0x0101: Binding success response
        response[0] = 0x01;
        assert_eq!(binding_request_ufrag(&response), None);
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(binding_request_ufrag(&no_cookie), None);
        assert_eq!(
            binding_request_ufrag(&[0x16, 0xfe, 0xfd, 0, 0]),
            None,
            "DTLS"
        );
        assert_eq!(binding_request_ufrag(&[0u8; 3]), None);
        assert_eq!(
            binding_request_ufrag(&binding(b":wxyz")),
            None,
            "empty ufrag"
        );
        let mut lying = good.clone();
        lying[23] = 0xff; // USERNAME length past the message
        assert_eq!(binding_request_ufrag(&lying), None);
    }
}
