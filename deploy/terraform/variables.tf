variable "region" {
  description = "AWS region of this deployment (a fleet region id, e.g. eu-west-1)."
  type        = string
}

variable "cluster" {
  description = "The cluster tag value: [providers.ec2] cluster in the controller config."
  type        = string
}

variable "vpc_id" {
  description = "The VPC the nodes and the controller run in."
  type        = string
}

variable "ami_id" {
  description = "AMI with the fleet binary and the units of deploy/systemd installed."
  type        = string
}

variable "media_instance_type" {
  description = "Default media instance type (the pool's instance_types list overrides it per launch)."
  type        = string
  default     = "c6i.large"
}

variable "turn_instance_type" {
  description = "Default TURN instance type (the pool's instance_types list overrides it per launch)."
  type        = string
  default     = "c6gn.medium"
}

variable "controller_cidrs" {
  description = "Where the controller runs: nodes accept nothing from it, but its API is open only to these networks and the load balancer in front of it."
  type        = list(string)
}

variable "api_client_cidrs" {
  description = "Networks allowed to reach the controller's API (the app backend, operators, a load balancer)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the nodes' root volumes (null: the account's default EBS key)."
  type        = string
  default     = null
}

# Owned by the code (fleet_ec2::tags and fleet_ec2::ports) and written to
# fleet.auto.tfvars.json; ec2/tests/deploy.rs checks that file against the code.
variable "tag_keys" {
  description = "The tag keys every fleet instance carries."
  type = object({
    cluster = string
    pool    = string
    region  = string
    kind    = string
    node_id = string
    market  = string
  })
}

variable "ports" {
  description = "The ports the controller and the nodes use."
  type = object({
    link_udp      = number
    api_tcp       = number
    node_http_tcp = number
    media_udp     = number
    # A media node's I/O workers serve media_udp, media_udp + 1, ... up to this.
    media_udp_last = number
    turn          = number
    turn_tls      = number
    relay_min     = number
    relay_max     = number
  })
}
