"""Names of the API: group, version, kinds and plurals. The operator and the CRDs read them from here."""

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DATASET_BUILD = "DatasetBuild"
FINE_TUNE_JOB = "FineTuneJob"

# kind -> (plural, singular, short names); plurals are what the API paths and RBAC rules use.
NAMES = {
    DATASET_BUILD: ("datasetbuilds", "datasetbuild", ["dsb"]),
    FINE_TUNE_JOB: ("finetunejobs", "finetunejob", ["ftj"]),
}
