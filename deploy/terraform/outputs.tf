# What the controller's [providers.ec2] section and its host need.

output "media_launch_template" {
  description = "launch_template of the region's media [[providers.ec2.pools]] entry."
  value       = aws_launch_template.node["media"].id
}

output "turn_launch_template" {
  description = "launch_template of the region's TURN [[providers.ec2.pools]] entry."
  value       = aws_launch_template.node["turn"].id
}

output "controller_instance_profile" {
  description = "Instance profile of the controller's host (its AWS credentials)."
  value       = aws_iam_instance_profile.controller.name
}

output "controller_security_group" {
  description = "Security group of the controller's host."
  value       = aws_security_group.controller.id
}
