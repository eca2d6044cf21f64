# The media and TURN launch templates. The EC2 pool provider launches from them, adding per
# launch the instance type, subnet, market, tags and user data (the node's bootstrap: where it
# reports, the certificate to pin and a one-time boot token; no secret). The AMI's systemd
# units (deploy/systemd) run `fleet boot-env` and then the node.

locals {
  kinds = {
    media = var.media_instance_type
    turn  = var.turn_instance_type
  }
}

resource "aws_launch_template" "node" {
  for_each               = local.kinds
  name                   = "fleet-${var.cluster}-${each.key}"
  image_id               = var.ami_id
  instance_type          = each.value
  vpc_security_group_ids = [each.key == "media" ? aws_security_group.media.id : aws_security_group.turn.id]
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }

  # IMDSv2 only (the nodes read user data and spot notices with session tokens), and not
  # reachable from containers or forwarded hops.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 16
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = { (var.tag_keys.cluster) = var.cluster }
  }
}
