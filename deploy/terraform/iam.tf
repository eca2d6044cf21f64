# The controller's role: launch, tag and terminate only instances of its cluster, and read.
#
# - RunInstances creates an instance only with the fleet:cluster tag of this cluster in the
#   request (the provider sets every tag in the same call), from the fleet's launch templates,
#   in its security groups and subnets of this region.
# - CreateTags only while creating those instances (the provider never tags afterwards).
# - TerminateInstances only on instances that already carry the cluster's tag.
# - DescribeInstances cannot be limited to resources (AWS evaluates it account-wide).
# - PassRole only for the nodes' role, only to EC2.
data "aws_caller_identity" "current" {}

locals {
  account     = data.aws_caller_identity.current.account_id
  cluster_tag = var.tag_keys.cluster
}

data "aws_iam_policy_document" "controller" {
  statement {
    sid     = "LaunchOnlyTaggedForThisCluster"
    actions = ["ec2:RunInstances"]
    resources = [
      "arn:aws:ec2:${var.region}:${local.account}:instance/*",
      "arn:aws:ec2:${var.region}:${local.account}:volume/*",
      "arn:aws:ec2:${var.region}:${local.account}:network-interface/*",
    ]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/${local.cluster_tag}"
      values   = [var.cluster]
    }
  }

  statement {
    sid     = "LaunchFromTheFleetsTemplatesAndNetwork"
    actions = ["ec2:RunInstances"]
    resources = [
      aws_launch_template.node["media"].arn,
      aws_launch_template.node["turn"].arn,
      "arn:aws:ec2:${var.region}::image/${var.ami_id}",
      "arn:aws:ec2:${var.region}:${local.account}:subnet/*",
      aws_security_group.media.arn,
      aws_security_group.turn.arn,
    ]
    condition {
      test     = "StringEquals"
      variable = "ec2:Vpc"
      values   = ["arn:aws:ec2:${var.region}:${local.account}:vpc/${var.vpc_id}"]
    }
  }

  statement {
    sid       = "TagOnlyAtLaunch"
    actions   = ["ec2:CreateTags"]
    resources = ["arn:aws:ec2:${var.region}:${local.account}:*/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  statement {
    sid       = "TerminateOnlyThisClustersInstances"
    actions   = ["ec2:TerminateInstances"]
    resources = ["arn:aws:ec2:${var.region}:${local.account}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/${local.cluster_tag}"
      values   = [var.cluster]
    }
  }

  statement {
    sid = "ListInstances"
    # The provider's only read: instances by their tags. DescribeInstances supports no
    # resource-level permissions (AWS evaluates it account-wide).
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"]
  }

  statement {
    sid       = "PassOnlyTheNodeRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.node.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "controller_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "controller" {
  name               = "fleet-${var.cluster}-controller-${var.region}"
  assume_role_policy = data.aws_iam_policy_document.controller_assume.json
  tags               = { (local.cluster_tag) = var.cluster }
}

resource "aws_iam_role_policy" "controller" {
  name   = "fleet-ec2-pools"
  role   = aws_iam_role.controller.id
  policy = data.aws_iam_policy_document.controller.json
}

resource "aws_iam_instance_profile" "controller" {
  name = "fleet-${var.cluster}-controller-${var.region}"
  role = aws_iam_role.controller.name
}

# The nodes' role has no permissions: a node gets its credentials from the controller over
# the link (a one-time boot token in user data), never from AWS.
resource "aws_iam_role" "node" {
  name               = "fleet-${var.cluster}-node-${var.region}"
  assume_role_policy = data.aws_iam_policy_document.controller_assume.json
  tags               = { (local.cluster_tag) = var.cluster }
}

resource "aws_iam_instance_profile" "node" {
  name = "fleet-${var.cluster}-node-${var.region}"
  role = aws_iam_role.node.name
}
