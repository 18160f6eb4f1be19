# The identity that deploys, rolls out and watches the endpoint: a service account CI jobs impersonate through
# workload identity federation (GitHub Actions, GitLab CI, Azure DevOps; no key file), with
#   roles/aiplatform.user          upload models, deploy them to the endpoint, set its traffic split
#   roles/monitoring.viewer        the endpoint's metrics for the rollout checks and latency diagnosis
#   roles/storage.objectViewer     and objectCreator on the bucket: stage model folders, read what was staged
#   roles/iam.serviceAccountUser   on the serving account only: deployed models run as it
#   roles/artifactregistry.writer  on the serving image repository: churnkit image build --push --target vertex
#
#   terraform output workload_identity_provider   # GCP_WORKLOAD_IDENTITY_PROVIDER of the CI templates
#   terraform output deployer_service_account     # GCP_SERVICE_ACCOUNT

resource "google_service_account" "deployer" {
  account_id   = "${var.name}-deployer"
  display_name = "churnkit deployer (CI and engineers)"
}

resource "google_project_iam_member" "deployer" {
  for_each = toset(["roles/aiplatform.user", "roles/monitoring.viewer"])
  project  = var.project
  role     = each.value
  member   = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_storage_bucket_iam_member" "deployer" {
  for_each = toset(["roles/storage.objectViewer", "roles/storage.objectCreator"])
  bucket   = google_storage_bucket.churnkit.name
  role     = each.value
  member   = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_service_account_iam_member" "deployer_acts_as_serve" {
  service_account_id = google_service_account.serve.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_artifact_registry_repository_iam_member" "deployer_pushes_image" {
  repository = google_artifact_registry_repository.serve.name
  location   = var.region
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.deployer.email}"
}

# ---- workload identity federation: one pool, a provider per CI whose variable is set -----------------
locals {
  ci_providers = merge(
    var.github_repository != "" ? {
      github = {
        issuer    = "https://token.actions.githubusercontent.com"
        audiences = []
        mapping   = { "google.subject" = "assertion.sub", "attribute.repository" = "assertion.repository" }
        condition = "assertion.repository == '${var.github_repository}'"
        principal = "attribute.repository/${var.github_repository}"
      }
    } : {},
    var.gitlab_project != "" ? {
      gitlab = {
        issuer    = var.gitlab_url
        audiences = []
        mapping   = { "google.subject" = "assertion.sub", "attribute.project_path" = "assertion.project_path" }
        condition = "assertion.project_path == '${var.gitlab_project}'"
        principal = "attribute.project_path/${var.gitlab_project}"
      }
    } : {},
    var.azure_devops_organization_id != "" ? {
      azure-devops = {
        issuer    = "https://vstoken.dev.azure.com/${var.azure_devops_organization_id}"
        audiences = ["api://AzureADTokenExchange"]
        mapping   = { "google.subject" = "assertion.sub" }
        condition = "assertion.sub == 'sc://${var.azure_devops_organization}/${var.azure_devops_project}/${var.azure_devops_service_connection}'"
        principal = "subject/sc://${var.azure_devops_organization}/${var.azure_devops_project}/${var.azure_devops_service_connection}"
      }
    } : {},
  )
}

resource "google_iam_workload_identity_pool" "ci" {
  count                     = length(local.ci_providers) > 0 ? 1 : 0
  workload_identity_pool_id = "${var.name}-ci"
  display_name              = "churnkit CI"
  description               = "CI jobs that deploy the churn model (OIDC)"

  depends_on = [google_project_service.apis]
}

resource "google_iam_workload_identity_pool_provider" "ci" {
  for_each                           = local.ci_providers
  workload_identity_pool_id          = google_iam_workload_identity_pool.ci[0].workload_identity_pool_id
  workload_identity_pool_provider_id = each.key
  display_name                       = each.key
  attribute_mapping                  = each.value.mapping
  attribute_condition                = each.value.condition

  oidc {
    issuer_uri        = each.value.issuer
    allowed_audiences = each.value.audiences
  }
}

resource "google_service_account_iam_member" "ci_impersonates_deployer" {
  for_each           = local.ci_providers
  service_account_id = google_service_account.deployer.name
  role               = "roles/iam.workloadIdentityUser"
  member = format("%s://iam.googleapis.com/%s/%s", startswith(each.value.principal, "subject/") ? "principal" : "principalSet",
  google_iam_workload_identity_pool.ci[0].name, each.value.principal)
}
