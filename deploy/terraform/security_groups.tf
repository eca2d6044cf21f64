# Media nodes: media over UDP and signaling over HTTPS from anywhere (the app's clients),
# and out to the controller's link.
resource "aws_security_group" "media" {
  name        = "fleet-${var.cluster}-media"
  description = "Fleet media nodes: WebRTC media and signaling"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

resource "aws_vpc_security_group_ingress_rule" "media_udp" {
  security_group_id = aws_security_group.media.id
  description       = "WebRTC media (ICE over one UDP port) from clients"
  ip_protocol       = "udp"
  from_port         = var.ports.media_udp
  to_port           = var.ports.media_udp
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "media_signaling" {
  security_group_id = aws_security_group.media.id
  description       = "Signaling (WHIP-style offers) from clients"
  ip_protocol       = "tcp"
  from_port         = var.ports.node_http_tcp
  to_port           = var.ports.node_http_tcp
  cidr_ipv4         = "0.0.0.0/0"
}

# TURN nodes: TURN over UDP, TCP and TLS, and the relay ports, from anywhere.
resource "aws_security_group" "turn" {
  name        = "fleet-${var.cluster}-turn"
  description = "Fleet TURN relays"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

resource "aws_vpc_security_group_ingress_rule" "turn_udp" {
  security_group_id = aws_security_group.turn.id
  description       = "TURN over UDP"
  ip_protocol       = "udp"
  from_port         = var.ports.turn
  to_port           = var.ports.turn
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "turn_tcp" {
  security_group_id = aws_security_group.turn.id
  description       = "TURN over TCP"
  ip_protocol       = "tcp"
  from_port         = var.ports.turn
  to_port           = var.ports.turn
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "turn_tls" {
  security_group_id = aws_security_group.turn.id
  description       = "TURN over TLS"
  ip_protocol       = "tcp"
  from_port         = var.ports.turn_tls
  to_port           = var.ports.turn_tls
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "turn_relay" {
  security_group_id = aws_security_group.turn.id
  description       = "Relayed media from peers"
  ip_protocol       = "udp"
  from_port         = var.ports.relay_min
  to_port           = var.ports.relay_max
  cidr_ipv4         = "0.0.0.0/0"
}

# Both kinds: out to the controller's link, and out to anywhere over UDP (media to clients,
# relayed media to peers), and HTTPS for the package mirrors and AWS endpoints.
resource "aws_vpc_security_group_egress_rule" "media_link" {
  for_each          = toset(var.controller_cidrs)
  security_group_id = aws_security_group.media.id
  description       = "Reports to the controller's link"
  ip_protocol       = "udp"
  from_port         = var.ports.link_udp
  to_port           = var.ports.link_udp
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "turn_link" {
  for_each          = toset(var.controller_cidrs)
  security_group_id = aws_security_group.turn.id
  description       = "Reports to the controller's link"
  ip_protocol       = "udp"
  from_port         = var.ports.link_udp
  to_port           = var.ports.link_udp
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "media_out" {
  security_group_id = aws_security_group.media.id
  description       = "Media to clients (ICE answers from the media port)"
  ip_protocol       = "udp"
  from_port         = 1024
  to_port           = 65535
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "turn_out" {
  security_group_id = aws_security_group.turn.id
  description       = "Relayed media to peers and answers to clients"
  ip_protocol       = "udp"
  from_port         = 1024
  to_port           = 65535
  cidr_ipv4         = "0.0.0.0/0"
}

# The controller: its link from the nodes, its API from the configured clients. Answers on the
# link need no rule: security groups are stateful.
resource "aws_security_group" "controller" {
  #checkov:skip=CKV2_AWS_5:attached to the controller's host, which this module does not create (output controller_security_group)
  name        = "fleet-${var.cluster}-controller"
  description = "Fleet controller: node link and API"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

resource "aws_vpc_security_group_ingress_rule" "controller_link_media" {
  security_group_id            = aws_security_group.controller.id
  description                  = "Node link from media nodes"
  ip_protocol                  = "udp"
  from_port                    = var.ports.link_udp
  to_port                      = var.ports.link_udp
  referenced_security_group_id = aws_security_group.media.id
}

resource "aws_vpc_security_group_ingress_rule" "controller_link_turn" {
  security_group_id            = aws_security_group.controller.id
  description                  = "Node link from TURN nodes"
  ip_protocol                  = "udp"
  from_port                    = var.ports.link_udp
  to_port                      = var.ports.link_udp
  referenced_security_group_id = aws_security_group.turn.id
}

resource "aws_vpc_security_group_ingress_rule" "controller_api" {
  for_each          = toset(var.api_client_cidrs)
  security_group_id = aws_security_group.controller.id
  description       = "Signaling and ops API"
  ip_protocol       = "tcp"
  from_port         = var.ports.api_tcp
  to_port           = var.ports.api_tcp
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "controller_https" {
  security_group_id = aws_security_group.controller.id
  description       = "The EC2 API over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
