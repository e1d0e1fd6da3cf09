"""The API's names: group, version, kinds, plurals, and the label and annotation keys.

One definition of the strings the operator, the trainer, the server and the CRD generator all
agree on. Label and annotation keys are part of the contract too: users select children with
them (`kubectl get jobs -l kubetune.io/finetunejob=NAME`) and the operator maps children back to
their owner by them. Imported by `kubetune_api.structural` (the CRDs), the operator's `names` modules, the
trainer's status reporter and the server's adapter lookup; imports nothing.
"""

from __future__ import annotations

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FINETUNEJOB_KIND = "FineTuneJob"
FINETUNEJOB_PLURAL = "finetunejobs"
MODELDEPLOYMENT_KIND = "ModelDeployment"
MODELDEPLOYMENT_PLURAL = "modeldeployments"

# FineTuneJob children.
LABEL_FTJ = f"{GROUP}/finetunejob"  # value: a label-safe form of the name
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_TRIAL = f"{GROUP}/trial"  # search trials (spec.search) instead of attempts
ANNOTATION_FTJ = f"{GROUP}/finetunejob"  # the full name (label values stop at 63 characters)
ANNOTATION_HASH = f"{GROUP}/config-hash"  # sha256 of the attempt's config.yaml
ANNOTATION_PARAMS = f"{GROUP}/trial-params"  # a trial's searched values, JSON

# ModelDeployment children.
LABEL_MDEP = f"{GROUP}/modeldeployment"  # value: a label-safe form of the name
LABEL_MODEL = f"{GROUP}/model"  # the model's name, or "router"
ANNOTATION_MDEP = f"{GROUP}/modeldeployment"  # the full name
ANNOTATION_ADAPTER = f"{GROUP}/adapter"  # the adapter served, on the pod template
ANNOTATION_ADAPTER_HASH = f"{GROUP}/adapter-revision"  # changes on every new adapter
