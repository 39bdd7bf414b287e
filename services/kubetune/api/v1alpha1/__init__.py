"""The spec models: the single source of truth for the CRDs, the operator and the services."""

from kubetune.api.v1alpha1.constants import API_VERSION, DATASET_BUILD, FINE_TUNE_JOB, GROUP, VERSION
from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.api.v1alpha1.resources import (
    DatasetBuild,
    FieldError,
    FineTuneJob,
    Resource,
    SpecError,
    load_resources,
    parse_resource,
    parse_spec,
)
from kubetune.api.v1alpha1.status import Condition, ConditionType, Phase, ResourceStatus

__all__ = [
    "API_VERSION",
    "DATASET_BUILD",
    "FINE_TUNE_JOB",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionType",
    "DatasetBuild",
    "DatasetBuildSpec",
    "FieldError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "Phase",
    "Resource",
    "ResourceStatus",
    "SpecError",
    "load_resources",
    "parse_resource",
    "parse_spec",
]
