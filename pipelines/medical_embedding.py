"""The product as one KFP pipeline: prep -> GPU training -> Matryoshka evaluation -> registration.

`build_pipeline(config, for_cluster)` turns a configuration profile into the pipeline: the
profile gives every parameter's default (so the Kubeflow UI's run form shows them), and on the
cluster the GPU request, node pool, retries and MinIO secret are attached to the tasks.
"""

import dataclasses
import json

from kfp import dsl, kubernetes

from components import evaluate_models, prep_data, register_model, train_model
from medembed.config import ClusterConfig, PipelineConfig

PIPELINE_NAME = "medical-embedding-finetune"


def build_pipeline(config: PipelineConfig, for_cluster: bool = True):
    data, training, evaluation, registry = config.data, config.train, config.eval, config.registry

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a sentence-embedding model for medical retrieval with Matryoshka dims; "
        "register it only if it beats the base model at every dim.",
    )
    def medical_embedding_pipeline(
        data_uri: str = data.data_uri,
        question_field: str = data.question_field,
        passage_field: str = data.passage_field,
        group_fields: list = list(data.group_fields),
        dev_fraction: float = data.dev_fraction,
        test_fraction: float = data.test_fraction,
        max_train_pairs: int = data.max_train_pairs,
        num_negatives: int = data.num_negatives,
        pii_action: str = data.pii_action,
        max_bad_row_fraction: float = data.max_bad_row_fraction,
        base_model: str = training.base_model,
        matryoshka_dims: list = list(training.matryoshka_dims),
        epochs: int = training.epochs,
        batch_size: int = training.batch_size,
        learning_rate: float = training.learning_rate,
        warmup_steps: int = training.warmup_steps,
        eval_steps: int = training.eval_steps,
        max_seq_length: int = training.max_seq_length,
        query_prompt: str = training.query_prompt,
        passage_prompt: str = training.passage_prompt,
        seed: int = training.seed,
        eval_batch_size: int = evaluation.batch_size,
        registry_uri: str = registry.registry_uri,
        model_name: str = registry.model_name,
        min_ndcg_gain: float = registry.min_ndcg_gain,
    ) -> str:
        # 1. data prep: clean, dedup, leakage-safe split, IR evaluation set
        prep = prep_data(
            data_uri=data_uri,
            question_field=question_field,
            passage_field=passage_field,
            group_fields=group_fields,
            dev_fraction=dev_fraction,
            test_fraction=test_fraction,
            max_train_pairs=max_train_pairs,
            seed=seed,
            # The base model tokenises (truncation figures) and mines hard negatives.
            base_model=base_model,
            max_seq_length=max_seq_length,
            num_negatives=num_negatives,
            pii_action=pii_action,
            max_bad_row_fraction=max_bad_row_fraction,
            # The profile's other DataConfig fields (dedup, distractors, mining), as plain JSON.
            data_options=json.loads(json.dumps(dataclasses.asdict(data))),
        ).set_display_name("data prep")

        # 2. GPU training: MatryoshkaLoss(MultipleNegativesRankingLoss)
        train = train_model(
            train_data=prep.outputs["train_data"],
            base_model=base_model,
            matryoshka_dims=matryoshka_dims,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            eval_steps=eval_steps,
            max_seq_length=max_seq_length,
            query_prompt=query_prompt,
            passage_prompt=passage_prompt,
            seed=seed,
            # The profile's other TrainConfig fields (loss, mini-batch, checkpoints, LoRA...), as plain JSON.
            train_options=json.loads(json.dumps(dataclasses.asdict(training))),
            # Checkpoints live under <checkpoint_uri>/<run id>: a retry of this run resumes from them.
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).set_display_name("GPU training")

        # 3. Matryoshka evaluation: base vs fine-tuned at every dim
        evaluate = evaluate_models(
            eval_data=prep.outputs["eval_data"],
            model=train.outputs["model"],
            batch_size=eval_batch_size,
            query_chunk_size=evaluation.query_chunk_size,
            precisions=list(evaluation.precisions),
            rescore_multiplier=evaluation.rescore_multiplier,
            tolerance=evaluation.tolerance,
            bootstrap_samples=evaluation.bootstrap_samples,
            bootstrap_seed=evaluation.bootstrap_seed,
            confidence=evaluation.confidence,
            index_passages=evaluation.index_passages,
            extra_collections=list(evaluation.extra_collections),
        ).set_display_name("Matryoshka evaluation")

        # 4. registration: versioned model + card + metrics; promoted only if it wins
        register = register_model(
            model=train.outputs["model"],
            results=evaluate.outputs["results"],
            train_data=prep.outputs["train_data"],
            registry_uri=registry_uri,
            model_name=model_name,
            min_ndcg_gain=min_ndcg_gain,
            pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_display_name("model registration")
        # A registration is a side effect: never replay it from cache.
        register.set_caching_options(False)

        if for_cluster:
            place_on_cluster(config.cluster, prep=prep, train=train, evaluate=evaluate, register=register,
                             prep_needs_gpu=data.num_negatives > 0)
        return register.outputs["model_uri"]

    return medical_embedding_pipeline


def place_on_cluster(cluster: ClusterConfig, *, prep, train, evaluate, register, prep_needs_gpu: bool) -> None:
    """GPU node pool for the stages that run the model (prep too when it mines hard negatives with
    the base model: e5-large on CPU would take longer than training), MinIO credentials from a
    Secret for every stage."""
    gpu_tasks = (prep, train, evaluate) if prep_needs_gpu else (train, evaluate)
    for task in gpu_tasks:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpu_count)
        task.set_cpu_request(cluster.train_cpu).set_memory_request(cluster.train_memory)
        for key, value in cluster.gpu_node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(
            task, key=cluster.gpu_toleration_key, operator="Exists", effect=cluster.gpu_toleration_effect
        )
    # Pre-emptible GPU nodes kill pods: let KFP retry the training task.
    train.set_retry(num_retries=cluster.train_retries, backoff_duration="60s", backoff_factor=2)
    for task in [t for t in (prep, register) if t not in gpu_tasks]:
        task.set_cpu_request(cluster.cpu_task_cpu).set_memory_request(cluster.cpu_task_memory)
    for task in (prep, train, evaluate, register):
        kubernetes.use_secret_as_env(
            task,
            secret_name=cluster.minio_secret,
            secret_key_to_env={"accesskey": "MINIO_ACCESS_KEY", "secretkey": "MINIO_SECRET_KEY"},
        )
        task.set_env_variable("MINIO_ENDPOINT", cluster.minio_endpoint)
        task.set_env_variable("MINIO_SECURE", str(cluster.minio_secure).lower())
