variable "subscription_id" {
  description = "Azure subscription id (azurerm 4.x requires it); empty = ARM_SUBSCRIPTION_ID from the environment."
  type        = string
  default     = ""
}

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
  description = "Managed online endpoint name, unique within the Azure region (churnkit deploy --endpoint); empty = churn-<suffix of this deployment>."
  type        = string
  default     = ""

  validation {
    condition     = var.endpoint_name == "" || can(regex("^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$", var.endpoint_name))
    error_message = "endpoint_name must be 3-32 letters, digits or '-', starting with a letter and not ending with '-'."
  }
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

# ---- autoscaling of one online deployment ---------------------------------------------------------------
variable "autoscale_deployment" {
  description = "Online deployment to autoscale (churnkit names them v<version>); empty = no autoscale setting."
  type        = string
  default     = ""
}

variable "min_instances" {
  description = "Autoscaling: fewest instances of the deployment."
  type        = number
  default     = 1
}

variable "max_instances" {
  description = "Autoscaling: most instances of the deployment."
  type        = number
  default     = 4
}

variable "cpu_scale_out_percent" {
  description = "Autoscaling: add an instance when average CPU over 5 minutes is above this."
  type        = number
  default     = 70
}

variable "cpu_scale_in_percent" {
  description = "Autoscaling: remove an instance when average CPU over 10 minutes is below this."
  type        = number
  default     = 25
}

variable "scale_out_cooldown_minutes" {
  description = "Autoscaling: minutes after a scale-out before the next scale action."
  type        = number
  default     = 5
}

variable "scale_in_cooldown_minutes" {
  description = "Autoscaling: minutes after a scale-in before the next scale action."
  type        = number
  default     = 10
}

# ---- the deployer identity and its CI trust (a federated credential per CI whose variable is set) --------
variable "github_repository" {
  description = "GitHub repository (owner/name) whose Actions sign in as the deployer; empty = no GitHub trust."
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
  description = "GitLab project path (group/project) whose CI jobs sign in as the deployer; empty = no GitLab trust."
  type        = string
  default     = ""
}

variable "gitlab_branch" {
  description = "Branch whose GitLab pipelines may sign in as the deployer."
  type        = string
  default     = "main"
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
  description = "Azure Resource Manager service connection (workload identity federation, this identity) the pipeline uses."
  type        = string
  default     = "churnkit-azure"
}
