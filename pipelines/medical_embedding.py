"""The product as one KFP pipeline: configuration -> data snapshot -> data prep -> changes since the
champion -> (if anything changed) GPU training -> Matryoshka evaluation -> model registration.

`build_pipeline(config, for_cluster)` turns a configuration (a profile plus compile-time changes)
into the pipeline. The run form exposes what runs vary (pipelines/run_form.py); the first task
resolves and validates the run's configuration and every stage receives it as one dict. On the
cluster the GPU request, node pool, retries and MinIO secret are attached to the tasks, and every
task runs in `cluster.image`.
"""

from kfp import dsl, kubernetes

import components
from medembed.config import ClusterConfig, PipelineConfig
from pipelines.run_form import RunForm, run_form

PIPELINE_NAME = "medical-embedding-finetune"


def build_pipeline(config: PipelineConfig, for_cluster: bool = True):
    stages = components.for_image(config.cluster.image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a sentence-embedding model for medical retrieval with Matryoshka dims; "
        "register it only if it beats the base model at every dim.",
    )
    @run_form(config)
    def medical_embedding_pipeline(form: RunForm) -> str:
        # 0. the run's configuration: the compiled profile + the run form, validated before any work
        resolve = stages.resolve_config(profile_config=config.to_dict(), **form.arguments)
        resolve.set_display_name("configuration")
        run_config = resolve.outputs["Output"]

        # 1. data prep: clean, dedup, leakage-safe split, hard negatives, IR evaluation set; cached
        #    only for the same input bytes (the snapshot is taken anew every run)
        snapshot = stages.snapshot_data(config=run_config).set_display_name("data snapshot")
        snapshot.set_caching_options(False)
        prep = stages.prep_data(config=run_config, data_identity=snapshot.outputs["Output"]).set_display_name("data prep")

        # Anything new since the champion? Same prepared data, base model and settings: stop here.
        changes = stages.check_changes(config=run_config, train_data=prep.outputs["train_data"])
        changes.set_display_name("changes since the champion").set_caching_options(False)

        with dsl.If(changes.outputs["retrain"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
            # 2. GPU training: MatryoshkaLoss(MultipleNegativesRankingLoss)
            train = stages.train_model(
                config=run_config,
                train_data=prep.outputs["train_data"],
                # Checkpoints live under <checkpoint_uri>/<run id>: a retry of this run resumes from them.
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ).set_display_name("GPU training")

            # 3. Matryoshka evaluation: base, candidate and champion at every dim, same data
            evaluate = stages.evaluate_models(
                config=run_config, eval_data=prep.outputs["eval_data"], model=train.outputs["model"],
            ).set_display_name("Matryoshka evaluation")
            # It scores the registry's current champion, which is not among its inputs: never replay it.
            evaluate.set_caching_options(False)

            # 4. registration: versioned model + card + metrics; promoted only if it passes the gate
            register = stages.register_model(
                config=run_config,
                model=train.outputs["model"],
                results=evaluate.outputs["results"],
                train_data=prep.outputs["train_data"],
                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).set_display_name("model registration")
            # A registration is a side effect: never replay it from cache.
            register.set_caching_options(False)
        with dsl.Else(name="unchanged"):
            keep = stages.keep_champion(reason=changes.outputs["reason"], champion_uri=changes.outputs["champion_uri"])
            keep.set_display_name("nothing new: champion kept")

        if for_cluster:
            place_on_cluster(config.cluster, light=(resolve, snapshot, changes, keep), prep=prep, train=train,
                             evaluate=evaluate, register=register, prep_needs_gpu=config.data.num_negatives > 0)
        return dsl.OneOf(register.outputs["model_uri"], keep.outputs["Output"])

    return medical_embedding_pipeline


def place_on_cluster(cluster: ClusterConfig, *, light, prep, train, evaluate, register, prep_needs_gpu: bool) -> None:
    """GPU node pool for the stages that run the model (prep too when it mines hard negatives with
    the base model: e5-large on CPU would take longer than training), MinIO credentials from a
    Secret for every stage that touches storage. `light` tasks only read and decide."""
    gpu_tasks = (prep, train, evaluate) if prep_needs_gpu else (train, evaluate)
    for task in gpu_tasks:
        if cluster.gpu_count > 0:
            task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpu_count)
            for key, value in cluster.gpu_node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            kubernetes.add_toleration(
                task, key=cluster.gpu_toleration_key, operator="Exists", effect=cluster.gpu_toleration_effect
            )
        task.set_cpu_request(cluster.train_cpu).set_memory_request(cluster.train_memory)
    train.set_retry(num_retries=cluster.train_retries, backoff_duration="60s", backoff_factor=2)
    for task in [t for t in (prep, register) if t not in gpu_tasks]:
        task.set_cpu_request(cluster.cpu_task_cpu).set_memory_request(cluster.cpu_task_memory)
    for task in light:
        task.set_cpu_request("500m").set_memory_request("1Gi")
    resolve, *storage_readers = light
    for task in (*storage_readers, prep, train, evaluate, register):
        kubernetes.use_secret_as_env(
            task,
            secret_name=cluster.minio_secret,
            secret_key_to_env={"accesskey": "MINIO_ACCESS_KEY", "secretkey": "MINIO_SECRET_KEY"},
        )
        task.set_env_variable("MINIO_ENDPOINT", cluster.minio_endpoint)
        task.set_env_variable("MINIO_SECURE", str(cluster.minio_secure).lower())
