variable "name" {
  description = "Prefix of every resource name (bucket, ECR repository, role, alarms)."
  type        = string
  default     = "churnkit"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the bucket, repository and endpoint (the kit reads it as AWS_REGION)."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_name" {
  description = "S3 bucket for model archives and data capture; empty means <name>-<account id>-<region>."
  type        = string
  default     = ""
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds model archives and captured data."
  type        = bool
  default     = false
}

variable "image_tag" {
  description = "Tag of the churnkit serving image pushed to the ECR repository."
  type        = string
  default     = "0.1.0"
}

variable "endpoint_name" {
  description = "SageMaker endpoint name (churnkit deploy --endpoint)."
  type        = string
  default     = "churn"
}

variable "variant_name" {
  description = "Production variant the alarms watch (the kit names variants v<model version>)."
  type        = string
  default     = "v1"
}

variable "create_endpoint" {
  description = "Also create the model, endpoint config and endpoint here (needs model_data_url); otherwise churnkit deploy creates them."
  type        = bool
  default     = false
}

variable "model_data_url" {
  description = "s3:// URL of a model.tar.gz exported by churnkit (only with create_endpoint)."
  type        = string
  default     = ""
}

variable "model_version" {
  description = "Registry version of that model (CHURNKIT_MODEL_VERSION in the container)."
  type        = string
  default     = "1"
}

variable "instance_type" {
  description = "Instance type of the production variant."
  type        = string
  default     = "ml.m5.large"
}

variable "instance_count" {
  description = "Initial instance count of the production variant."
  type        = number
  default     = 1
}

variable "canary_percent" {
  description = "Guardrails: share of capacity that gets the new model first (CANARY)."
  type        = number
  default     = 10

  validation {
    condition     = var.canary_percent >= 1 && var.canary_percent <= 99
    error_message = "canary_percent must be between 1 and 99."
  }
}

variable "bake_seconds" {
  description = "Guardrails: seconds the canary bakes before the rest of the traffic shifts."
  type        = number
  default     = 600
}

variable "max_execution_seconds" {
  description = "Guardrails: the blue/green update is rolled back if it has not finished in this time."
  type        = number
  default     = 3600
}

variable "p99_latency_ms" {
  description = "Alarm: p99 ModelLatency above this many milliseconds."
  type        = number
  default     = 500
}

variable "max_5xx" {
  description = "Alarm: this many Invocation5XXErrors in one minute."
  type        = number
  default     = 1
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

variable "model_name" {
  description = "Registered model name (churnkit names SageMaker models <model_name>-v<version>-...; the deployer may manage those)."
  type        = string
  default     = "churn"
}

# ---- autoscaling of the production variant (with create_endpoint) ------------------------------------
variable "min_instances" {
  description = "Autoscaling: fewest instances of the variant."
  type        = number
  default     = 1

  validation {
    condition     = var.min_instances >= 1
    error_message = "min_instances must be at least 1 (a real-time endpoint cannot scale to zero)."
  }
}

variable "max_instances" {
  description = "Autoscaling: most instances of the variant."
  type        = number
  default     = 4
}

variable "target_invocations_per_instance" {
  description = "Autoscaling: SageMakerVariantInvocationsPerInstance (requests per minute per instance) to track."
  type        = number
  default     = 600
}

variable "scale_in_cooldown_seconds" {
  description = "Autoscaling: seconds after a scale-in before another scale-in."
  type        = number
  default     = 300
}

variable "scale_out_cooldown_seconds" {
  description = "Autoscaling: seconds after a scale-out before another scale-out."
  type        = number
  default     = 60
}

# ---- the deployer identity and its CI trust (OIDC; a trust is created only when its variable is set) --
variable "github_repository" {
  description = "GitHub repository (owner/name) whose Actions may assume the deployer role; empty = no GitHub trust."
  type        = string
  default     = ""
}

variable "github_subject" {
  description = "Part of the GitHub OIDC subject after repo:<owner/name>: (ref:refs/heads/main, environment:prod, ...)."
  type        = string
  default     = "ref:refs/heads/main"
}

variable "gitlab_url" {
  description = "GitLab instance issuing the ID tokens (https://gitlab.com or your own)."
  type        = string
  default     = "https://gitlab.com"
}

variable "gitlab_project" {
  description = "GitLab project path (group/project) whose CI jobs may assume the deployer role; empty = no GitLab trust."
  type        = string
  default     = ""
}

variable "gitlab_branch" {
  description = "Branch whose GitLab pipelines may assume the deployer role (scheduled and web pipelines run on it)."
  type        = string
  default     = "main"
}

variable "azure_devops_organization_id" {
  description = "Azure DevOps organization id (GUID; the OIDC issuer is vstoken.dev.azure.com/<id>); empty = no Azure DevOps trust."
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
  description = "Azure DevOps service connection (AWS, OpenID Connect) that assumes the deployer role."
  type        = string
  default     = "churnkit-aws"
}

variable "existing_oidc_provider_arns" {
  description = "OIDC providers that already exist in the account, by CI (github, gitlab, azure_devops): reused, not created."
  type        = map(string)
  default     = {}
}

variable "deployer_principals" {
  description = "IAM principals (role or user ARNs) of engineers who may assume the deployer role; empty = this account's admins decide."
  type        = list(string)
  default     = []
}

variable "deployer_session_seconds" {
  description = "Longest deployer session: covers the 120-minute monthly job (role-duration-seconds of the CI templates)."
  type        = number
  default     = 10800

  validation {
    condition     = var.deployer_session_seconds >= 3600 && var.deployer_session_seconds <= 43200
    error_message = "deployer_session_seconds must be between 3600 and 43200."
  }
}
