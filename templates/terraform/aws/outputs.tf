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
  description = "CHURNKIT_AWS_IMAGE_URI: push the serving image (templates/serving/Dockerfile) here."
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
  description = "churnkit deploy --endpoint."
  value       = var.endpoint_name
}

output "churnkit_env" {
  description = "Shell lines setting every variable the sagemaker target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    CHURNKIT_AWS_ROLE_ARN  = aws_iam_role.sagemaker.arn
    CHURNKIT_AWS_BUCKET    = aws_s3_bucket.churnkit.id
    CHURNKIT_AWS_IMAGE_URI = local.image_uri
    AWS_REGION             = var.region
  } : "export ${k}=${v}"])
}
