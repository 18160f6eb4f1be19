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
  description = "CHURNKIT_GCP_IMAGE_URI: push the serving image (templates/serving/Dockerfile, EXTRAS=gcp) here."
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

output "churnkit_env" {
  description = "Shell lines setting every variable the vertex target reads: eval \"$(terraform output -raw churnkit_env)\"."
  value = join("\n", [for k, v in {
    GOOGLE_CLOUD_PROJECT         = var.project
    CHURNKIT_GCP_REGION          = var.region
    CHURNKIT_GCP_IMAGE_URI       = local.image_uri
    CHURNKIT_GCP_BUCKET          = google_storage_bucket.churnkit.name
    CHURNKIT_GCP_SERVICE_ACCOUNT = google_service_account.serve.email
  } : "export ${k}=${v}"])
}
