"""The spec models: the single source of truth for the CRDs, the operator and the services."""

from kubetune.spec.constants import API_VERSION, DATASET_BUILD, FINE_TUNE_JOB, GROUP, VERSION
from kubetune.spec.datasetbuild import DatasetBuildSpec
from kubetune.spec.finetunejob import FineTuneJobSpec
from kubetune.spec.resources import (
    DatasetBuild,
    FieldError,
    FineTuneJob,
    Resource,
    SpecError,
    load_resources,
    parse_resource,
    parse_spec,
)
from kubetune.spec.status import Condition, ConditionType, Phase, ResourceStatus

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
