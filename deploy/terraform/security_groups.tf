# One security group per node kind and one for the controller. Security groups are stateful:
# answers need no rule of their own.

resource "aws_security_group" "media" {
  name        = "fleet-${var.cluster}-media"
  description = "Fleet media nodes: WebRTC media and signaling"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

resource "aws_security_group" "turn" {
  name        = "fleet-${var.cluster}-turn"
  description = "Fleet TURN relays"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

resource "aws_security_group" "controller" {
  #checkov:skip=CKV2_AWS_5:attached to the controller's host, which this module does not create (output controller_security_group)
  name        = "fleet-${var.cluster}-controller"
  description = "Fleet controller: node link and API"
  vpc_id      = var.vpc_id
  tags        = { (var.tag_keys.cluster) = var.cluster }
}

locals {
  node_groups = {
    media = aws_security_group.media.id
    turn  = aws_security_group.turn.id
  }

  # What the app's clients and their peers reach, from anywhere.
  public_ingress = {
    media_udp = {
      group = "media", protocol = "udp", from = var.ports.media_udp, to = var.ports.media_udp_last
      description = "WebRTC media (ICE over UDP, one port per I/O worker) from clients"
    }
    media_ice_tcp = {
      group = "media", protocol = "tcp", from = var.ports.media_udp, to = var.ports.media_udp_last
      description = "WebRTC media over ICE-TCP (the media ports' TCP twins) from clients without UDP"
    }
    media_signaling = {
      group = "media", protocol = "tcp", from = var.ports.node_http_tcp, to = var.ports.node_http_tcp
      description = "Signaling (WHIP-style offers) from clients"
    }
    turn_udp = {
      group = "turn", protocol = "udp", from = var.ports.turn, to = var.ports.turn
      description = "TURN over UDP"
    }
    turn_tcp = {
      group = "turn", protocol = "tcp", from = var.ports.turn, to = var.ports.turn
      description = "TURN over TCP"
    }
    turn_tls = {
      group = "turn", protocol = "tcp", from = var.ports.turn_tls, to = var.ports.turn_tls
      description = "TURN over TLS"
    }
    turn_relay = {
      group = "turn", protocol = "udp", from = var.ports.relay_min, to = var.ports.relay_max
      description = "Relayed media from peers"
    }
  }

  # Every node reports to the controller's link from each controller network.
  link_egress = {
    for pair in setproduct(keys(local.node_groups), var.controller_cidrs) :
    "${pair[0]}-${pair[1]}" => { group = pair[0], cidr = pair[1] }
  }
}

resource "aws_vpc_security_group_ingress_rule" "public" {
  for_each          = local.public_ingress
  security_group_id = local.node_groups[each.value.group]
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.from
  to_port           = each.value.to
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "link" {
  for_each          = local.link_egress
  security_group_id = local.node_groups[each.value.group]
  description       = "Reports to the controller's link"
  ip_protocol       = "udp"
  from_port         = var.ports.link_udp
  to_port           = var.ports.link_udp
  cidr_ipv4         = each.value.cidr
}

# Media to clients and relayed media to peers start from the node's side too (ICE checks,
# relaying to a peer).
resource "aws_vpc_security_group_egress_rule" "media_out" {
  for_each          = local.node_groups
  security_group_id = each.value
  description       = "Media and relayed media out over UDP"
  ip_protocol       = "udp"
  from_port         = 1024
  to_port           = 65535
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "controller_link" {
  for_each                     = local.node_groups
  security_group_id            = aws_security_group.controller.id
  description                  = "Node link from ${each.key} nodes"
  ip_protocol                  = "udp"
  from_port                    = var.ports.link_udp
  to_port                      = var.ports.link_udp
  referenced_security_group_id = each.value
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
