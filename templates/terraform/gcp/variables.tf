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
  description = "Display name of the Vertex AI endpoint (churnkit deploy --endpoint)."
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
