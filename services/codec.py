"""The one bridge between protobuf messages and `services.types` dataclasses.

Generated code (services/_generated, produced by `make protos`) is imported here and nowhere else;
the gRPC stub/servicer classes are re-exported for the processes that serve or dial the scheduler.
"""

from __future__ import annotations

from services._generated import ferrum_pb2 as pb
from services._generated import ferrum_pb2_grpc as pb_grpc
from services.types import (
    ClusterStatus,
    GenerateRequest,
    ModelInfo,
    PositionLogprobs,
    RequestFailure,
    RequestOutput,
    SamplingParams,
    TokenizerBundle,
    TokenLogprob,
    WorkerInfo,
    WorkerRegister,
    WorkerStats,
)

SchedulerStub = pb_grpc.SchedulerStub
SchedulerServicer = pb_grpc.SchedulerServicer
add_scheduler_servicer = pb_grpc.add_SchedulerServicer_to_server
messages = pb  # message classes, for servicers that must construct an empty reply

# ---------------------------------------------------------------- sampling and requests


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    return pb.SamplingParams(
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
        presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty, has_seed=s.seed is not None, seed=s.seed or 0,
        max_tokens=s.max_tokens, min_tokens=s.min_tokens, stop_token_ids=s.stop_token_ids,
        ignore_eos=s.ignore_eos, logprobs=s.logprobs, logit_bias=s.logit_bias,
    )


def sampling_from_pb(m: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=m.temperature, top_p=m.top_p, top_k=m.top_k, min_p=m.min_p,
        presence_penalty=m.presence_penalty, frequency_penalty=m.frequency_penalty,
        repetition_penalty=m.repetition_penalty, seed=m.seed if m.has_seed else None,
        max_tokens=m.max_tokens, min_tokens=m.min_tokens, stop_token_ids=list(m.stop_token_ids),
        ignore_eos=m.ignore_eos, logprobs=m.logprobs, logit_bias=dict(m.logit_bias),
    )


def request_to_pb(r: GenerateRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=r.request_id, model=r.model, prompt_token_ids=r.prompt_token_ids,
        sampling=sampling_to_pb(r.sampling), priority=r.priority, cache_salt=r.cache_salt,
        resume_token_ids=r.resume_token_ids, trace_context=r.trace_context,
    )


def request_from_pb(m: pb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(
        request_id=m.request_id, model=m.model, prompt_token_ids=list(m.prompt_token_ids),
        sampling=sampling_from_pb(m.sampling), priority=m.priority, cache_salt=m.cache_salt,
        resume_token_ids=list(m.resume_token_ids), trace_context=dict(m.trace_context),
    )


# ---------------------------------------------------------------- outputs


def _logprob_to_pb(t: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=t.token_id, logprob=t.logprob)


def _logprob_from_pb(m: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(token_id=m.token_id, logprob=m.logprob)


def output_to_pb(o: RequestOutput) -> pb.RequestOutput:
    return pb.RequestOutput(
        request_id=o.request_id, token_ids=o.token_ids,
        logprobs=[
            pb.PositionLogprobs(chosen=_logprob_to_pb(p.chosen), top=[_logprob_to_pb(t) for t in p.top])
            for p in o.logprobs
        ],
        finish_reason=o.finish_reason, prompt_tokens=o.prompt_tokens,
        cached_tokens=o.cached_tokens, error=o.error,
    )


def output_from_pb(m: pb.RequestOutput) -> RequestOutput:
    return RequestOutput(
        request_id=m.request_id, token_ids=list(m.token_ids),
        logprobs=[
            PositionLogprobs(chosen=_logprob_from_pb(p.chosen), top=[_logprob_from_pb(t) for t in p.top])
            for p in m.logprobs
        ],
        finish_reason=m.finish_reason, prompt_tokens=m.prompt_tokens,
        cached_tokens=m.cached_tokens, error=m.error,
    )


# ---------------------------------------------------------------- gateway stream


def generate_msg(r: GenerateRequest) -> pb.GatewayMessage:
    return pb.GatewayMessage(generate=request_to_pb(r))


def gateway_abort_msg(request_id: str) -> pb.GatewayMessage:
    return pb.GatewayMessage(abort=pb.AbortRequest(request_id=request_id))


def decode_gateway_msg(m: pb.GatewayMessage) -> GenerateRequest | str:
    """The request to start, or the id of the request to abort."""
    if m.WhichOneof("kind") == "generate":
        return request_from_pb(m.generate)
    return m.abort.request_id


def output_batch_to_pb(items: list[RequestOutput | RequestFailure]) -> pb.OutputBatch:
    batch = pb.OutputBatch()
    for item in items:
        if isinstance(item, RequestFailure):
            batch.failures.append(pb.RequestFailure(request_id=item.request_id, code=item.code,
                                                    message=item.message, retry_after_s=item.retry_after_s or 0))
        else:
            batch.outputs.append(output_to_pb(item))
    return batch


def output_batch_from_pb(m: pb.OutputBatch) -> list[RequestOutput | RequestFailure]:
    failures = [RequestFailure(f.request_id, f.code, f.message, f.retry_after_s or None) for f in m.failures]
    return [output_from_pb(o) for o in m.outputs] + failures


# ---------------------------------------------------------------- models and tokenizers


def tokenizer_to_pb(t: TokenizerBundle) -> pb.TokenizerBundle:
    return pb.TokenizerBundle(
        model=t.model, files=t.files, max_model_len=t.max_model_len,
        eos_token_ids=t.eos_token_ids, revision=t.revision,
    )


def tokenizer_from_pb(m: pb.TokenizerBundle) -> TokenizerBundle:
    return TokenizerBundle(
        model=m.model, files=dict(m.files), max_model_len=m.max_model_len,
        eos_token_ids=list(m.eos_token_ids), revision=m.revision,
    )


def models_to_pb(models: list[ModelInfo]) -> pb.ListModelsReply:
    return pb.ListModelsReply(models=[
        pb.ModelInfo(name=m.name, max_model_len=m.max_model_len, workers=m.workers, created=m.created)
        for m in models
    ])


def models_from_pb(m: pb.ListModelsReply) -> list[ModelInfo]:
    return [ModelInfo(x.name, x.max_model_len, x.workers, x.created) for x in m.models]


# ---------------------------------------------------------------- worker session

_STATS_FIELDS = [f.name for f in WorkerStats.__dataclass_fields__.values()]


def stats_to_pb(s: WorkerStats) -> pb.WorkerStats:
    return pb.WorkerStats(**{name: getattr(s, name) for name in _STATS_FIELDS})


def stats_from_pb(m: pb.WorkerStats) -> WorkerStats:
    return WorkerStats(**{name: getattr(m, name) for name in _STATS_FIELDS})


def register_msg(r: WorkerRegister) -> pb.WorkerMessage:
    return pb.WorkerMessage(register=pb.WorkerRegister(
        worker_id=r.worker_id, model=r.model, epoch=r.epoch, max_running=r.max_running,
        num_blocks=r.num_blocks, block_size=r.block_size, max_model_len=r.max_model_len,
        tokenizer=tokenizer_to_pb(r.tokenizer),
    ))


def stats_msg(s: WorkerStats) -> pb.WorkerMessage:
    return pb.WorkerMessage(stats=stats_to_pb(s))


def outputs_msg(outputs: list[RequestOutput]) -> pb.WorkerMessage:
    return pb.WorkerMessage(outputs=pb.StepOutputs(outputs=[output_to_pb(o) for o in outputs]))


def decode_worker_msg(m: pb.WorkerMessage) -> WorkerRegister | WorkerStats | list[RequestOutput]:
    """A worker's message as the dataclass it carries: a registration, stats, or step outputs."""
    kind = m.WhichOneof("kind")
    if kind == "register":
        r = m.register
        return WorkerRegister(
            worker_id=r.worker_id, model=r.model, epoch=r.epoch, max_running=r.max_running,
            num_blocks=r.num_blocks, block_size=r.block_size, max_model_len=r.max_model_len,
            tokenizer=tokenizer_from_pb(r.tokenizer),
        )
    if kind == "stats":
        return stats_from_pb(m.stats)
    if kind == "outputs":
        return [output_from_pb(o) for o in m.outputs.outputs]
    raise ValueError(f"worker message without a kind: {m!r}")


def assign_msg(requests: list[GenerateRequest]) -> pb.SchedulerMessage:
    return pb.SchedulerMessage(assign=pb.Assign(requests=[request_to_pb(r) for r in requests]))


def abort_msg(request_id: str) -> pb.SchedulerMessage:
    return pb.SchedulerMessage(abort=pb.AbortRequest(request_id=request_id))


def decode_scheduler_msg(m: pb.SchedulerMessage) -> tuple[str, list[GenerateRequest] | str]:
    """("assign", requests) or ("abort", request_id)."""
    kind = m.WhichOneof("kind")
    if kind == "assign":
        return "assign", [request_from_pb(r) for r in m.assign.requests]
    if kind == "abort":
        return "abort", m.abort.request_id
    raise ValueError(f"scheduler message without a kind: {m!r}")


def abort_request(request_id: str) -> pb.AbortRequest:
    return pb.AbortRequest(request_id=request_id)


def cluster_status_to_pb(c: ClusterStatus) -> pb.ClusterStatusReply:
    return pb.ClusterStatusReply(
        workers=[pb.WorkerInfo(worker_id=w.worker_id, model=w.model, epoch=w.epoch,
                               stats=stats_to_pb(w.stats)) for w in c.workers],
        queued=c.queued, total_requests=c.total_requests, draining=c.draining,
    )


def cluster_status_from_pb(m: pb.ClusterStatusReply) -> ClusterStatus:
    return ClusterStatus(
        workers=[WorkerInfo(w.worker_id, w.model, w.epoch, stats_from_pb(w.stats)) for w in m.workers],
        queued=m.queued, total_requests=m.total_requests, draining=m.draining,
    )
