"""Run-time placement of the GPU stages on a cluster.

Executors that understand these tags read them; the in-process and multiprocess executors ignore
them. ``dagster-k8s/config`` is what Dagster's Kubernetes executor (``k8s_job_executor``) turns
into the step pod's spec: a node selector for GPU nodes, a toleration for their taint, and one
GPU per step. The Celery executor routes on ``dagster-celery/queue``: run a worker with
``-q gpu`` on each GPU machine.
"""

GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
    },
    "dagster-celery/queue": "gpu",
}
