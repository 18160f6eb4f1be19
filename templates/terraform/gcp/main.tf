# What the churnkit `vertex` deploy target needs on Google Cloud: a bucket for staged model folders,
# an Artifact Registry repository for the serving image, a service account the serving container runs
# as (read models, write logs and metrics, nothing else) and the Vertex AI endpoint.
#
#   terraform init && terraform apply -var project=my-project
#   eval "$(terraform output -raw churnkit_env)"   # GOOGLE_CLOUD_PROJECT, CHURNKIT_GCP_* for churnkit
#
# churnkit deploy uploads model versions and deploys them to the endpoint with a traffic split; the
# endpoint below only creates the (empty) endpoint.

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0, < 7.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

locals {
  bucket    = var.bucket_name != "" ? var.bucket_name : "${var.project}-${var.name}"
  labels    = merge({ "churnkit-project" = var.name }, var.labels)
  image_uri = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.serve.repository_id}/serve:${var.image_tag}"
}

resource "google_project_service" "apis" {
  for_each = toset(["aiplatform.googleapis.com", "artifactregistry.googleapis.com", "storage.googleapis.com",
  "iam.googleapis.com", "iamcredentials.googleapis.com", "sts.googleapis.com", "monitoring.googleapis.com"])
  service            = each.value
  disable_on_destroy = false
}

# ---- storage: model folders staged for Model.upload (churnkit/models/) ----------------------------
resource "google_storage_bucket" "churnkit" {
  name                        = local.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  versioning {
    enabled = true
  }

  depends_on = [google_project_service.apis]
}

# ---- the serving image --------------------------------------------------------------------------
resource "google_artifact_registry_repository" "serve" {
  repository_id = "${var.name}-serve"
  location      = var.region
  format        = "DOCKER"
  description   = "churnkit serving image (templates/serving/Dockerfile)"
  labels        = local.labels

  depends_on = [google_project_service.apis]
}

# ---- the identity the serving container runs as -------------------------------------------------
resource "google_service_account" "serve" {
  account_id   = "${var.name}-serve"
  display_name = "churnkit serving container"
}

resource "google_storage_bucket_iam_member" "serve_reads_models" {
  bucket = google_storage_bucket.churnkit.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.serve.email}"
}

# No Artifact Registry grant: Vertex AI pulls the serving image with its own service agent, not as this account.

resource "google_project_iam_member" "serve_observability" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project
  role     = each.value
  member   = "serviceAccount:${google_service_account.serve.email}"
}

# Deployers (people, CI) may stage models, use Vertex AI and run deployed models as the serving account.
resource "google_storage_bucket_iam_member" "deployers_stage_models" {
  for_each = toset(var.deployer_members)
  bucket   = google_storage_bucket.churnkit.name
  role     = "roles/storage.objectAdmin"
  member   = each.value
}

resource "google_project_iam_member" "deployers_use_vertex" {
  for_each = toset(var.deployer_members)
  project  = var.project
  role     = "roles/aiplatform.user"
  member   = each.value
}

resource "google_service_account_iam_member" "deployers_act_as_serve" {
  for_each           = toset(var.deployer_members)
  service_account_id = google_service_account.serve.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# ---- the Vertex AI endpoint (churnkit finds it by display name) ------------------------------------
resource "google_vertex_ai_endpoint" "churn" {
  name         = tostring(parseint(substr(sha256("${var.project}/${var.region}/${var.endpoint_name}"), 0, 7), 16)) # numeric id
  display_name = var.endpoint_name
  description  = "churnkit churn model endpoint"
  location     = var.region
  labels       = merge(local.labels, { "churnkit-endpoint" = var.endpoint_name })

  depends_on = [google_project_service.apis]
}
