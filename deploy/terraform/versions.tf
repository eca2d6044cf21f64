# The fleet's AWS resources for one region: the media and TURN launch templates the EC2 pool
# provider launches from, the nodes' and the controller's security groups, the nodes' instance
# profile, and the controller's least-privilege role. Apply once per region (one provider
# region per apply, e.g. with a workspace per region).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}
