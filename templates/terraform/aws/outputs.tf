# The values churnkit's sagemaker target reads from the environment, by variable name.

output "role_arn" {
  description = "CHURNKIT_AWS_ROLE_ARN: the SageMaker execution role."
  value       = aws_iam_role.sagemaker.arn
}

output "bucket" {
  description = "CHURNKIT_AWS_BUCKET: model archives and data capture."
  value       = aws_s3_bucket.churnkit.id
}

output "image_uri" {
  description = "CHURNKIT_AWS_IMAGE_URI: churnkit image build --push --target sagemaker pushes the serving image here."
  value       = local.image_uri
}

output "region" {
  description = "AWS_REGION."
  value       = var.region
}

output "ecr_repository_url" {
  description = "docker push target (tag with image_tag)."
  value       = aws_ecr_repository.serve.repository_url
}

output "alarm_names" {
  description = "The alarms the guardrails roll back on."
  value       = values(local.alarms)
}

output "endpoint_name" {
  description = "CHURNKIT_ENDPOINT (or --endpoint of churnkit deploy, rollout, rollback, endpoint and monitor --latency)."
  value       = var.endpoint_name
}

output "deployer_role_arn" {
  description = "AWS_ROLE_ARN of the CI templates: the role that deploys, rolls out and monitors (OIDC trust for the CI named)."
  value       = aws_iam_role.deployer.arn
}

output "deployer_permissions" {
  description = "What the deployer role may do, by statement (sid -> actions): cite it when a call is denied."
  value       = { for s in data.aws_iam_policy_document.deployer.statement : s.sid => s.actions }
}

output "oidc_provider_arns" {
  description = "The OIDC identity providers the deployer role trusts, by CI."
  value       = { for k, v in local.oidc_enabled : k => lookup(var.existing_oidc_provider_arns, k, try(aws_iam_openid_connect_provider.ci[k].arn, "")) }
}

output "autoscaling_resource_id" {
  description = "Application Auto Scaling resource id of the variant (empty without create_endpoint)."
  value       = try(aws_appautoscaling_target.variant[0].resource_id, "")
}

output "churnkit_env" {
  description = "Shell lines setting every variable the sagemaker target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    CHURNKIT_AWS_ROLE_ARN  = aws_iam_role.sagemaker.arn
    CHURNKIT_AWS_BUCKET    = aws_s3_bucket.churnkit.id
    CHURNKIT_AWS_IMAGE_URI = local.image_uri
    AWS_REGION             = var.region
    CHURNKIT_ENDPOINT      = var.endpoint_name
  } : "export ${k}=${v}"])
}
