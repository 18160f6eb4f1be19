# Batch scoring on an Azure ML batch endpoint (churnkit score --target azureml): the compute cluster its
# jobs run on, scaled to zero between runs. The jobs read their input and write predictions.csv through the
# workspace's default datastore (workspaceblobstore) with the workspace's own credentials, so the cluster
# needs no identity or role of its own. The deployer's AzureML Data Scientist role already covers what the
# kit does: create the batch endpoint and its deployments, start (invoke), follow and cancel jobs, upload the
# staged input and download the output through the datastore; creating or deleting compute is left to
# Terraform.

resource "azurerm_machine_learning_compute_cluster" "batch" {
  name                          = var.batch_compute_name
  location                      = azurerm_resource_group.churnkit.location
  machine_learning_workspace_id = azurerm_machine_learning_workspace.churnkit.id
  vm_priority                   = var.batch_vm_priority
  vm_size                       = var.batch_vm_size
  local_auth_enabled            = false
  ssh_public_access_enabled     = false
  description                   = "churnkit batch scoring (scales to zero between runs)"
  tags                          = local.tags

  scale_settings {
    min_node_count                       = 0
    max_node_count                       = var.batch_max_nodes
    scale_down_nodes_after_idle_duration = "PT5M"
  }
}

variable "batch_compute_name" {
  description = "Name of the compute cluster batch jobs run on (CHURNKIT_AZURE_BATCH_COMPUTE; 2-16 characters)."
  type        = string
  default     = "churnkit-batch"
}

variable "batch_vm_size" {
  description = "VM size of the batch compute cluster's nodes."
  type        = string
  default     = "Standard_DS3_v2"
}

variable "batch_vm_priority" {
  description = "Dedicated, or LowPriority (cheaper; nodes may be preempted and their mini-batches retried)."
  type        = string
  default     = "Dedicated"

  validation {
    condition     = contains(["Dedicated", "LowPriority"], var.batch_vm_priority)
    error_message = "batch_vm_priority is Dedicated or LowPriority."
  }
}

variable "batch_max_nodes" {
  description = "Most nodes a batch job may use (the kit refuses an instance_count above it before sending)."
  type        = number
  default     = 4
}

output "batch_compute" {
  description = "CHURNKIT_AZURE_BATCH_COMPUTE: the cluster churnkit score --target azureml runs its jobs on."
  value       = azurerm_machine_learning_compute_cluster.batch.name
}

output "batch_prefix" {
  description = "Where batch jobs' outputs land: the workspace blob store (azureml://datastores/workspaceblobstore/paths/azureml/<job>/score/)."
  value       = "azureml://datastores/workspaceblobstore/paths/azureml/"
}
