# The values churnkit's vertex target reads from the environment, by variable name.

output "project" {
  description = "GOOGLE_CLOUD_PROJECT."
  value       = var.project
}

output "region" {
  description = "CHURNKIT_GCP_REGION."
  value       = var.region
}

output "image_uri" {
  description = "CHURNKIT_GCP_IMAGE_URI: churnkit image build --push --target vertex pushes the serving image here."
  value       = local.image_uri
}

output "bucket" {
  description = "CHURNKIT_GCP_BUCKET: staged model folders."
  value       = google_storage_bucket.churnkit.name
}

output "service_account" {
  description = "CHURNKIT_GCP_SERVICE_ACCOUNT: the identity deployed models run as."
  value       = google_service_account.serve.email
}

output "endpoint_id" {
  description = "The Vertex AI endpoint's id (churnkit finds it by its display name)."
  value       = google_vertex_ai_endpoint.churn.name
}

output "deployer_service_account" {
  description = "GCP_SERVICE_ACCOUNT of the CI templates: the account that deploys, rolls out and monitors."
  value       = google_service_account.deployer.email
}

output "deployer_roles" {
  description = "The deployer's roles: cite them when a call is denied."
  value = concat([for r in google_project_iam_member.deployer : "${r.role} on project ${var.project}"],
    [for r in google_storage_bucket_iam_member.deployer : "${r.role} on gs://${r.bucket}"],
    ["roles/iam.serviceAccountUser on ${google_service_account.serve.email}",
  "roles/artifactregistry.writer on ${google_artifact_registry_repository.serve.name}"])
}

output "workload_identity_provider" {
  description = "GCP_WORKLOAD_IDENTITY_PROVIDER of the CI templates, by CI (projects/N/locations/global/workloadIdentityPools/P/providers/R)."
  value       = { for k, p in google_iam_workload_identity_pool_provider.ci : k => p.name }
}

output "churnkit_env" {
  description = "Shell lines setting every variable the vertex target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    GOOGLE_CLOUD_PROJECT         = var.project
    CHURNKIT_GCP_REGION          = var.region
    CHURNKIT_GCP_IMAGE_URI       = local.image_uri
    CHURNKIT_GCP_BUCKET          = google_storage_bucket.churnkit.name
    CHURNKIT_GCP_SERVICE_ACCOUNT = google_service_account.serve.email
    CHURNKIT_GCP_MIN_REPLICAS    = var.min_replicas
    CHURNKIT_GCP_MAX_REPLICAS    = var.max_replicas
    CHURNKIT_ENDPOINT            = var.endpoint_name
  } : "export ${k}=${v}"])
}
