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

variable "max_prediction_psi" {
  description = "Alarm: the kit's PredictionDriftPSI metric above this value."
  type        = number
  default     = 0.2
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
