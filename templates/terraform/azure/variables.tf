variable "name" {
  description = "Prefix of every resource name (letters and digits; storage and registry names drop the '-')."
  type        = string
  default     = "churnkit"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,14}$", var.name))
    error_message = "name must be 3-15 lowercase letters or digits, starting with a letter (it feeds storage and ACR names)."
  }
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "resource_group_name" {
  description = "Resource group to create; empty means rg-<name>."
  type        = string
  default     = ""
}

variable "endpoint_name" {
  description = "Managed online endpoint name (unique within the Azure region; churnkit deploy --endpoint)."
  type        = string
  default     = "churn"
}

variable "image_tag" {
  description = "Tag of the churnkit serving image pushed to the registry."
  type        = string
  default     = "0.1.0"
}

variable "create_endpoint" {
  description = "Create the (empty) managed online endpoint here; churnkit deploy adds deployments and traffic."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
