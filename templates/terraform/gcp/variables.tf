variable "project" {
  description = "Google Cloud project id (the kit reads it as GOOGLE_CLOUD_PROJECT)."
  type        = string
}

variable "region" {
  description = "Region of the bucket, Artifact Registry repository and Vertex AI endpoint (CHURNKIT_GCP_REGION)."
  type        = string
  default     = "europe-west4"
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "churnkit"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,20}$", var.name))
    error_message = "name must be 3-21 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "bucket_name" {
  description = "Cloud Storage bucket for staged model folders; empty means <project>-<name>."
  type        = string
  default     = ""
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds model folders."
  type        = bool
  default     = false
}

variable "endpoint_name" {
  description = "Display name of the Vertex AI endpoint (CHURNKIT_ENDPOINT in churnkit_env; churnkit deploy --endpoint)."
  type        = string
  default     = "churn"
}

variable "image_tag" {
  description = "Tag of the churnkit serving image pushed to Artifact Registry."
  type        = string
  default     = "0.1.0"
}

variable "deployer_members" {
  description = "Principals allowed to deploy (e.g. [\"group:ml-team@example.com\", \"serviceAccount:ci@...\"])."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Extra labels on every resource."
  type        = map(string)
  default     = {}
}

# ---- replicas of each deployed model (passed to churnkit deploy through churnkit_env) ----------------------
variable "min_replicas" {
  description = "Fewest replicas of a deployed model (Vertex dedicated resources min_replica_count)."
  type        = number
  default     = 1
}

variable "max_replicas" {
  description = "Most replicas of a deployed model; above min_replicas Vertex autoscales on CPU (60 % target)."
  type        = number
  default     = 3
}

# ---- the deployer's CI trust (a workload identity provider per CI whose variable is set) -----------------
variable "github_repository" {
  description = "GitHub repository (owner/name) whose Actions may impersonate the deployer; empty = no GitHub trust."
  type        = string
  default     = ""
}

variable "gitlab_url" {
  description = "GitLab instance issuing the ID tokens (https://gitlab.com or your own)."
  type        = string
  default     = "https://gitlab.com"
}

variable "gitlab_project" {
  description = "GitLab project path (group/project) whose CI jobs may impersonate the deployer; empty = no GitLab trust."
  type        = string
  default     = ""
}

variable "azure_devops_organization_id" {
  description = "Azure DevOps organization id (GUID; issuer vstoken.dev.azure.com/<id>); empty = no Azure DevOps trust."
  type        = string
  default     = ""
}

variable "azure_devops_organization" {
  description = "Azure DevOps organization name (subject sc://<organization>/<project>/<service connection>)."
  type        = string
  default     = ""
}

variable "azure_devops_project" {
  description = "Azure DevOps project name."
  type        = string
  default     = ""
}

variable "azure_devops_service_connection" {
  description = "Azure DevOps service connection whose tokens may impersonate the deployer."
  type        = string
  default     = "churnkit-gcp"
}
