from kfp import dsl


def record_run(final_status: dsl.PipelineTaskFinalStatus, registry_uri: str, model_name: str, notify_url: str):
    """The exit handler: record how the run ended (succeeded or failed, and why) next to the models,
    and POST it to notify_url when one is given. Runs whatever happened to the other tasks."""
    from medembed.models import setup_logging
    from medembed.run_record import record

    setup_logging()
    error = final_status.error_message if final_status.state != "SUCCEEDED" else ""
    record(final_status.pipeline_job_resource_name, final_status.state, error or "", registry_uri, model_name, notify_url)
