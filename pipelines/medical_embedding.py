"""The product as one KFP pipeline: configuration -> data snapshot -> data prep -> changes since the
champion -> (if anything changed) GPU training -> Matryoshka evaluation -> model registration, with
an exit handler that records how the run ended (and posts it to a webhook when one is given).

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
    def medical_embedding_pipeline(form: RunForm):
        # Whatever happens below, the run's outcome is recorded next to the models (and announced).
        record = stages.record_run(registry_uri=form.values["registry_uri"], model_name=form.values["model_name"],
                                   notify_url=form.values["notify_url"]).set_display_name("record the run")
        record.set_caching_options(False)  # a side effect of every run: never replayed
        with dsl.ExitHandler(record, name="medical embedding run"):
            # 0. the run's configuration: the compiled profile + the run form, validated before any work
            resolve = stages.resolve_config(profile_config=config.to_dict(), **form.arguments)
            resolve.set_display_name("configuration")
            run_config = resolve.outputs["Output"]

            # 1. data prep: clean, dedup, leakage-safe split, hard negatives, IR evaluation set; cached
            #    only for the same input bytes (the snapshot is taken anew every run)
            snapshot = stages.snapshot_data(config=run_config).set_display_name("data snapshot")
            snapshot.set_caching_options(False)
            prep = stages.prep_data(config=run_config, data_identity=snapshot.outputs["Output"])
            prep.set_display_name("data prep")

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
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                ).set_display_name("model registration")
                # A registration is a side effect: never replay it from cache.
                register.set_caching_options(False)
            with dsl.Else(name="unchanged"):
                keep = stages.keep_champion(reason=changes.outputs["reason"],
                                            champion_uri=changes.outputs["champion_uri"])
                keep.set_display_name("nothing new: champion kept")

        if for_cluster:
            place_on_cluster(config.cluster, light=(resolve, snapshot, changes, keep, record), prep=prep, train=train,
                             evaluate=evaluate, register=register, prep_needs_gpu=config.data.num_negatives > 0)

    return medical_embedding_pipeline


def place_on_cluster(cluster: ClusterConfig, *, light, prep, train, evaluate, register, prep_needs_gpu: bool) -> None:
    """Where and how each task runs: the GPU node pool for the stages that run the model (prep too
    when it mines hard negatives with the base model: e5-large on CPU would take longer than
    training), requests and limits, a scratch volume, /dev/shm and the base-model cache for them,
    a timeout on every task, and MinIO credentials from a Secret for every task that touches storage.
    `light` tasks only read and decide."""
    model_tasks = (prep, train, evaluate) if prep_needs_gpu else (train, evaluate)
    for task in model_tasks:
        if cluster.gpu_count > 0:
            task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpu_count)
            for key, value in cluster.gpu_node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            kubernetes.add_toleration(
                task, key=cluster.gpu_toleration_key, operator="Exists", effect=cluster.gpu_toleration_effect
            )
        task.set_cpu_request(cluster.train_cpu).set_cpu_limit(cluster.train_cpu_limit)
        task.set_memory_request(cluster.train_memory).set_memory_limit(cluster.train_memory)
        # DataLoader workers share batches through /dev/shm; a container's default 64 MB is too small.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=cluster.shm_size)
        kubernetes.add_ephemeral_volume(task, volume_name="scratch", mount_path="/scratch",
                                        access_modes=["ReadWriteOnce"], size=cluster.scratch_size,
                                        storage_class_name=cluster.scratch_storage_class or None)
        task.set_env_variable("TMPDIR", "/scratch")
        if cluster.model_cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=cluster.model_cache_pvc, mount_path="/models-cache")
            task.set_env_variable("MEDEMBED_MODEL_CACHE", "/models-cache")
        else:
            task.set_env_variable("MEDEMBED_MODEL_CACHE", "/scratch/models")
        kubernetes.set_timeout(task, cluster.train_timeout_s if task is train else cluster.task_timeout_s)
    train.set_retry(num_retries=cluster.train_retries, backoff_duration="60s", backoff_factor=2)
    for task in [t for t in (prep, register) if t not in model_tasks]:
        task.set_cpu_request(cluster.cpu_task_cpu).set_cpu_limit(cluster.cpu_task_cpu_limit)
        task.set_memory_request(cluster.cpu_task_memory).set_memory_limit(cluster.cpu_task_memory)
        kubernetes.set_timeout(task, cluster.task_timeout_s)
    for task in light:
        task.set_cpu_request("500m").set_cpu_limit("1").set_memory_request("1Gi").set_memory_limit("1Gi")
        kubernetes.set_timeout(task, cluster.task_timeout_s)
    resolve, *storage_readers = light
    for task in (*storage_readers, prep, train, evaluate, register):
        kubernetes.use_secret_as_env(
            task,
            secret_name=cluster.minio_secret,
            secret_key_to_env={"accesskey": "MINIO_ACCESS_KEY", "secretkey": "MINIO_SECRET_KEY"},
        )
        task.set_env_variable("MINIO_ENDPOINT", cluster.minio_endpoint)
        task.set_env_variable("MINIO_SECURE", str(cluster.minio_secure).lower())
