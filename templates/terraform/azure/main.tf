# What the churnkit `azureml` deploy target needs on Azure: an Azure ML workspace with its storage
# account, Key Vault, Application Insights and container registry, plus the managed online endpoint
# (through azapi: azurerm has no managed online endpoint resource).
#
#   terraform init
#   terraform apply -var subscription_id="$(az account show --query id -o tsv)" -var location=westeurope
#   eval "$(terraform output -raw churnkit_env)"   # AZURE_* , AZUREML_WORKSPACE, CHURNKIT_AZURE_IMAGE_URI
#
# azurerm 4.x needs the subscription explicitly: -var subscription_id=... (or ARM_SUBSCRIPTION_ID in the
# environment, which the provider reads when the variable is left empty).
#
# churnkit deploy creates one deployment per model version and sets the endpoint's traffic; the
# endpoint below ignores traffic changes so Terraform and the kit do not fight over them.

terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 4.50, < 5.0" # Key Vault rbac_authorization_enabled; federated credentials by parent_id alone
    }
    azapi = {
      source  = "Azure/azapi"
      version = ">= 2.0, < 3.0"
    }
  }
}

provider "azurerm" {
  subscription_id = var.subscription_id != "" ? var.subscription_id : null # null: ARM_SUBSCRIPTION_ID

  features {
    key_vault {
      purge_soft_delete_on_destroy = false
    }
  }
}

provider "azapi" {}

data "azurerm_client_config" "current" {}

locals {
  resource_group = var.resource_group_name != "" ? var.resource_group_name : "rg-${var.name}"
  suffix         = substr(sha256("${data.azurerm_client_config.current.subscription_id}/${local.resource_group}"), 0, 6)
  tags           = merge({ "churnkit-project" = var.name }, var.tags)
  image_uri      = "${azurerm_container_registry.churnkit.login_server}/churnkit-serve:${var.image_tag}"
  # online endpoint names are unique per Azure region: the default carries the same suffix as the registry
  endpoint_name = var.endpoint_name != "" ? var.endpoint_name : "churn-${local.suffix}"
}

resource "azurerm_resource_group" "churnkit" {
  name     = local.resource_group
  location = var.location
  tags     = local.tags
}

# ---- the workspace's dependencies --------------------------------------------------------------
resource "azurerm_storage_account" "churnkit" {
  name                            = "${var.name}${local.suffix}"
  resource_group_name             = azurerm_resource_group.churnkit.name
  location                        = azurerm_resource_group.churnkit.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  tags                            = local.tags
}

resource "azurerm_key_vault" "churnkit" {
  name                       = "kv-${substr(var.name, 0, 14)}-${local.suffix}" # <= 24 characters
  resource_group_name        = azurerm_resource_group.churnkit.name
  location                   = azurerm_resource_group.churnkit.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  purge_protection_enabled   = true
  soft_delete_retention_days = 7
  rbac_authorization_enabled = true
  tags                       = local.tags
}

resource "azurerm_log_analytics_workspace" "churnkit" {
  name                = "log-${var.name}"
  resource_group_name = azurerm_resource_group.churnkit.name
  location            = azurerm_resource_group.churnkit.location
  sku                 = "PerGB2018"
  retention_in_days   = 30
  tags                = local.tags
}

resource "azurerm_application_insights" "churnkit" {
  name                = "appi-${var.name}"
  resource_group_name = azurerm_resource_group.churnkit.name
  location            = azurerm_resource_group.churnkit.location
  workspace_id        = azurerm_log_analytics_workspace.churnkit.id
  application_type    = "web"
  tags                = local.tags
}

resource "azurerm_container_registry" "churnkit" {
  name                = "acr${var.name}${local.suffix}"
  resource_group_name = azurerm_resource_group.churnkit.name
  location            = azurerm_resource_group.churnkit.location
  sku                 = "Basic"
  admin_enabled       = false
  tags                = local.tags
}

# ---- the workspace --------------------------------------------------------------------------------
resource "azurerm_machine_learning_workspace" "churnkit" {
  name                    = "mlw-${var.name}"
  resource_group_name     = azurerm_resource_group.churnkit.name
  location                = azurerm_resource_group.churnkit.location
  storage_account_id      = azurerm_storage_account.churnkit.id
  key_vault_id            = azurerm_key_vault.churnkit.id
  application_insights_id = azurerm_application_insights.churnkit.id
  container_registry_id   = azurerm_container_registry.churnkit.id
  tags                    = local.tags

  identity {
    type = "SystemAssigned"
  }
}

# ---- the managed online endpoint (azapi: azurerm has no resource for it) -----------------------------
resource "azapi_resource" "endpoint" {
  count     = var.create_endpoint ? 1 : 0
  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-04-01"
  name      = local.endpoint_name
  parent_id = azurerm_machine_learning_workspace.churnkit.id
  location  = azurerm_resource_group.churnkit.location
  tags      = local.tags

  identity {
    type = "SystemAssigned"
  }

  body = {
    kind = "Managed"
    properties = {
      authMode    = "Key"
      description = "churnkit churn model endpoint"
    }
  }

  response_export_values = ["properties.scoringUri"]

  lifecycle {
    ignore_changes = [body.properties.traffic, body.properties.mirrorTraffic] # set by churnkit deploy
  }
}

# The endpoint's system-assigned identity needs no role assignment here: Azure ML grants it AcrPull on the
# workspace registry and Storage Blob Data Reader on the workspace storage when the endpoint is created.
