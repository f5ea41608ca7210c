"""The training recipe, top to bottom: validate -> setup_model -> setup_engine -> setup_data ->
train -> save.

``validate`` does everything a user can get wrong (config, model, data, output directory,
resume point) before any model loads and before anything is written. ``setup_model`` loads the
base (partitioned from the first byte under ZeRO-3) and injects the adapter; ``setup_engine``
hands only the trainable parameters to DeepSpeed and proves that they are whole on every rank;
``train`` runs the loop (progress, metrics, eval, checkpoints, preemption, non-finite steps);
``save`` writes the adapter, the plot, the finished run config and the merged export.

What the run resolved (batch split, steps, lr, resume point) is in ``self.plan`` (train_plan.py);
the config is only read. Code that observes a run (the benchmarks' probes) passes ``callbacks``:
objects with any of ``on_engine_ready(trainer)`` and ``on_step_end(trainer, record)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import PREEMPTED_EXIT_CODE
from .adapters import save_adapter
from .adapters.io import CHAT_TEMPLATE_NAME
from .adapters.config import MERGEABLE_METHODS
from .distributed import checkpoint as ckpt
from .distributed import engine as ds_engine
from .distributed import process_group as dist
from .distributed import zero3_params
from .distributed.ds_config import batch_summary
from .distributed.errors import LostRank, RunFailure
from .distributed.health import Heartbeat, describe_lost_rank, start_heartbeat
from .distributed.op_cache import pending_cpu_adam_build
from .distributed.param_report import describe_report, parameter_report
from .distributed.stop import StopRequest
from .data.batches import real_token_count
from .file_io import write_json_atomically
from .frozen_linear import reroute_frozen_bf16_linears
from .host_memory import release_free_heap
from .quantization import base_record, release_checkpoint_mapping
from .run.contents import StartState, check_output_path, claim, clear_previous_run, listing
from .run_config import TrainConfig
from .run.directory import RunDir, write_run_record
from .run.lock import OutputDirBusy, RunLock
from .run.metrics import MetricsLog, Progress, StepTimer, memory_stats, plot_losses, read_metrics
from .train_plan import Plan, attach_adapter, build_plan, choose_resume, make_batches
from .evaluate import describe_eval, evaluate, sample_generations
from .loss import global_loss_scale, token_loss_sum


class TrainingDiverged(RunFailure):
    """The model diverged: non-finite parameters after an update, a non-finite eval loss, or too
    many consecutive steps with a non-finite loss or gradients."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_libraries(debug: bool) -> None:
    """Libraries warn per rank and per step; keep the run log readable (--debug shows it all)."""
    if not debug:
        import datasets

        datasets.utils.disable_progress_bars()
        # A malformed file is reported once by the data loader, with file and line; the
        # library's own log line about it would be a second, less helpful message.
        datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


class Trainer:
    """One training run of ``cfg``; ``run()`` returns the process exit status."""

    def __init__(self, cfg: TrainConfig, callbacks: tuple = ()):
        self.cfg = cfg
        self.callbacks = tuple(callbacks)
        self.rank, self.local_rank, self.world_size = dist.world_from_environment()
        self.run_dir = RunDir(cfg.output_dir)
        self.plan: Plan | None = None
        self.model = None
        self.engine = None
        self.trainable_names: list[str] = []
        self.batches = None
        self.step = 0
        self.bad_streak = 0
        self.bad_total = 0
        self.suspect_from: int | None = None  # the step whose update a divergence may have started at
        self.classification_records = None
        self.history: list[dict] = []  # eval records of this process (the run's are in metrics.jsonl)
        self.started = time.perf_counter()
        self._stop: StopRequest | None = None
        self._heartbeat: Heartbeat | None = None
        self._load_context = None
        self._lock: RunLock | None = None  # rank 0's hold on OUTPUT_DIR (one run at a time)
        self._lock_refusal: OutputDirBusy | None = None
        self._before: StartState | None = None  # OUTPUT_DIR as this run found it (rank 0)

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(self, *args)

    # --- orchestration ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        except BaseException:
            self.undo_failed_start()
            raise

    def _run(self) -> int:
        _quiet_libraries(self.cfg.debug)
        # From the start: a preemption signal during setup must not kill the process (SIGUSR1's
        # default action); the first step then ends with a checkpoint and the preemption exit.
        # SIGTERM only once the process group is joined: until then nothing is written, and a rank
        # blocked in the rendezvous (whose host rank failed) can only be ended by SIGTERM's
        # default action, which is what the deepspeed launcher sends when another rank fails.
        self._stop = StopRequest(signals=(signal.SIGUSR1, signal.SIGINT))
        if self.rank == 0:
            self._before = StartState.of(self.run_dir)
        try:
            dist.check_rendezvous_port()  # a taken port: said in seconds, before the plan is built
            self.plan = self.validate()
            if self.plan.resume.finished:
                return self.complete_finished_run()
            dist.init_distributed(self.cfg.dist_timeout)
            self._stop.watch(signal.SIGTERM)
            self._heartbeat = start_heartbeat()  # names the lost rank if a collective fails
            ds_engine.quiet_deepspeed(self.cfg.debug and self.rank == 0)
            self.claim_output_dir()
            self.write_run_config(finished=False)
            self.setup_model()
            self.setup_engine()
            self.setup_data()
            status = self.train()
            if status == 0:
                status = self.save()
            return status
        except RunFailure:
            raise
        except RuntimeError as err:
            if self.world_size > 1 and dist.is_collective_failure(err):
                lost = self._heartbeat.lost_ranks() if self._heartbeat is not None else []
                reporter = min(r for r in range(self.world_size) if r not in lost)
                newest = ckpt.latest_checkpoint(self.run_dir, log=lambda message: None)
                message = describe_lost_rank(err, lost, self.world_size, self.step, self.cfg.dist_timeout,
                                             newest.path if newest else None)
                raise LostRank(message, reporter=reporter) from err
            raise
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self._stop.restore()
            dist.shutdown()
            if self._lock is not None:
                self._lock.release()

    # --- 1. validate: user errors, before any model loads and before anything is written ----

    def validate(self) -> Plan:
        """The plan (``plan.resume.finished`` when this exact run already finished in OUTPUT_DIR).

        Rank 0 locks OUTPUT_DIR before reading it, so its checks see no other run's writes in
        progress; a lock file is created only once the checks have passed (a refusal writes
        nothing). The other ranks only read: they must not wait on their own rank 0's lock.
        """
        plan = build_plan(self.cfg, self.world_size)
        check_output_path(self.run_dir)  # before the lock file is looked for there
        if self.rank == 0:
            self._lock = self._try_lock(create=False)
        if self._lock_refusal is not None and self.world_size == 1:
            raise self._lock_refusal  # (with more ranks, they are told after the rendezvous)
        resume = choose_resume(plan, self.log)
        plan = dataclasses.replace(plan, resume=resume)
        if resume.finished:
            return plan
        if self.rank == 0 and self._lock is None and self._lock_refusal is None:
            self._lock = self._try_lock(create=True)
        if self._lock is not None:
            self._lock.record_holder()
        if self._lock_refusal is not None and self.world_size == 1:
            raise self._lock_refusal
        return plan

    def undo_failed_start(self) -> None:
        """A fresh run that fails before its first step leaves OUTPUT_DIR as it found it: what it
        created is removed (and run_config.json it replaced restored), so the corrected command is
        not refused for a run that never trained."""
        fresh = self.plan is not None and self.plan.resume.checkpoint is None and not self.plan.resume.finished
        if self.rank != 0 or self._before is None or not fresh or self.step > 0:
            return
        removed = self._before.restore(self.run_dir)
        if removed:
            print(f"nothing was trained: removed what this start wrote in {self.run_dir} ({listing(removed, 8)})",
                  file=sys.stderr, flush=True)

    def _try_lock(self, create: bool) -> RunLock | None:
        try:
            return RunLock.acquire(self.run_dir, create=create, log=self.log)
        except OutputDirBusy as err:
            self._lock_refusal = err
            return None

    def claim_output_dir(self) -> None:
        """Every rank learns whether rank 0 holds OUTPUT_DIR (a refusal ends them all, at once,
        with rank 0's message); then a start-over clears the earlier run's own files, and the run
        records the names it owns before it writes any of them."""
        if self.world_size > 1 and dist.any_rank(self._lock_refusal is not None):
            raise self._lock_refusal or OutputDirBusy(f"{self.run_dir} is in use by another run (see rank 0)")
        if self.rank == 0 and self.plan.resume.start_over is not None:
            clear_previous_run(self.run_dir, self.plan.resume.start_over, self.log)
        if self.rank == 0:
            claim(self.run_dir)

    def write_run_config(self, finished: bool, **final) -> None:
        """OUTPUT_DIR/run_config.json: what was trained on what (export and generate read it)."""
        if self.rank != 0:
            return
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        write_run_record(self.run_dir, self.plan.record(finished, **final))

    # --- 2. model: partitioned as it loads, adapter injected into the partitioned model -----

    def setup_model(self) -> None:
        from transformers import AutoModelForCausalLM

        plan, cfg = self.plan, self.cfg
        _seed_everything(cfg.seed)  # adapter init draws from torch's RNG: every rank alike
        for note in plan.notes:
            self.log(f"ds_config: {note}")
        for warning in plan.warnings:
            self.log(f"warning: {warning}")
        base = f"{plan.dtype}" + (f", {plan.quantization.describe()}" if plan.quantization else "")
        self.log(f"model {plan.model_path} ({base}, attention {plan.attn}); ZeRO stage "
                 f"{plan.zero_stage}, {self.world_size} process(es); {batch_summary(plan.ds_config)}")
        # Must stay alive until the end: transformers checks it through a weak reference.
        self._load_context = zero3_params.Zero3LoadContext(plan.ds_config, plan.zero3)
        quantized = {"quantization_config": plan.quantization.bnb_config()} if plan.quantization else {}
        model = AutoModelForCausalLM.from_pretrained(plan.model_path, dtype=plan.dtype,
                                                     attn_implementation=plan.attn, **quantized)
        model.config.use_cache = False
        if plan.quantization:
            # save_adapter records it: an export or a reload of the adapter rebuilds this base.
            model.loretta_base_quantization = base_record(model, plan.quantization)
            release_checkpoint_mapping(model)
            gc.collect()
            release_free_heap()  # the full-precision weights the quantizer read, freed one by one
        model, self.trainable_names = attach_adapter(model, plan.adapter)
        if plan.dtype == torch.bfloat16:
            reroute_frozen_bf16_linears(model)  # bf16 backward on CPUs without native bf16: see frozen_linear
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # The frozen embedding output has no grad; checkpointed blocks still need one to
            # backpropagate into the adapters inside them.
            model.enable_input_require_grads()
            self.log(f"gradient checkpointing: each of the {model.config.num_hidden_layers} decoder layers keeps "
                     "only its input and is recomputed in backward")
        if plan.resume.checkpoint is not None:
            ckpt.load_trainable_into_model(plan.resume.checkpoint.path, model, self.trainable_names)
        self.model = model

    # --- 3. engine: optimizer over trainable parameters only; prove they are whole ----------

    def setup_engine(self) -> None:
        plan = self.plan
        build_note = pending_cpu_adam_build(plan.ds_config)
        if build_note:
            self.log(build_note)
        self.engine = ds_engine.initialize(self.model, plan.ds_config)
        zero3_params.make_trainable_whole(self.model)
        report = parameter_report(self.model)
        whole_everywhere = not dist.any_rank(not report["trainable_all_whole"])
        if not whole_everywhere:
            raise RuntimeError("some trainable parameters are partitioned by ZeRO-3 on some rank "
                               f"({report['trainable_not_whole']}); raise stage3_param_persistence_threshold")
        report.update(zero_stage=plan.zero_stage, world_size=self.world_size,
                      trainable_whole_on_every_rank=whole_everywhere,
                      stage3_param_persistence_threshold=plan.ds_config["zero_optimization"].get(
                          "stage3_param_persistence_threshold"),
                      optimizer_numel_this_rank=sum(p.numel() for p in ds_engine.fp32_master_partitions(self.engine)))
        self.param_report = report
        self.log(describe_report(report))
        if self.rank == 0:
            write_json_atomically(self.run_dir.param_report, report)
        resume = plan.resume
        if resume.checkpoint is None:
            ds_engine.begin_lr_schedule(self.engine.lr_scheduler)
        else:
            ckpt.restore_optimizer(resume.checkpoint.path, self.engine, self.model)
            if not ckpt.restore_rng(resume.checkpoint.path, self.rank):
                _seed_everything(self.cfg.seed + 1000 * resume.step + self.rank)
            self.step = resume.step
            self.bad_streak = int(resume.state.get("bad_streak", 0))
            self.bad_total = int(resume.state.get("bad_total", 0))
            self.log(f"resumed from {resume.checkpoint.path} at step {self.step}")
        self._notify("on_engine_ready")

    # --- 4. data: this rank's shard, at the resumed position --------------------------------

    def setup_data(self) -> None:
        plan = self.plan
        self.log(plan.data.summary())
        self.batches = make_batches(plan, self.rank)
        if plan.packing:
            self.log(f"  packing: {len(plan.data.train)} examples into {len(self.batches.epoch_rows(0))} rows "
                     f"of {plan.data.seq_len} tokens, efficiency {self.batches.efficiency(0):.1%} "
                     f"(real tokens / slots, epoch 0)")
        self.classification_records = plan.data.classification_eval_records
        if plan.resume.state is not None:
            self.batches.load_state_dict(plan.resume.state["data"])

    # --- 5. the loop ------------------------------------------------------------------------

    def train(self) -> int:
        plan, cfg, engine = self.plan, self.cfg, self.engine
        metrics = MetricsLog(self.run_dir, self.rank == 0, resume_step=self.step, report_to=self.cfg.report_to,
                             settings=self.plan.settings)
        if metrics.tensorboard:
            self.log(f"TensorBoard logs in {self.run_dir.tensorboard}")
        if self.step == 0 and self.evaluates:
            with zero3_params.untraced_forwards(engine) if plan.zero3 else contextlib.nullcontext():
                self.evaluate_and_log(metrics)
        progress = Progress(self.rank == 0, plan.total_steps, self.step)
        stream = self.batches.forever()
        device = dist.device()
        engine.train()
        timer = StepTimer()
        try:
            while self.step < plan.total_steps:
                lr = engine.get_lr()[0]
                loss_sum, tokens, bad_loss = 0.0, 0, False
                micro_batches = [next(stream) for _ in range(plan.grad_accum)]
                scale, targets = global_loss_scale(micro_batches, plan.grad_accum, self.world_size)
                for batch in micro_batches:
                    loss = token_loss_sum(engine, batch, device)
                    loss_sum += loss.item()
                    loss = loss * scale
                    if not torch.isfinite(loss):
                        # NaN gradients everywhere make DeepSpeed skip the update on every rank.
                        bad_loss, loss = True, loss * float("nan")
                    engine.backward(loss)
                    engine.step()  # applies the optimizer at the accumulation boundary only
                    tokens += real_token_count(batch)
                stop, bad_any, broken = dist.flags_on_any_rank(self._stop.requested, bad_loss,
                                                               not self.trainable_finite())
                bad = bad_any or not engine.was_step_applied()
                if broken:
                    # Finite gradients can still write inf/NaN (an lr of 1e30): this state is never
                    # saved, evaluated or exported.
                    raise TrainingDiverged(self.divergence_message(
                        f"the update of step {self.step + 1} left non-finite trainable parameters"))
                if bad and plan.zero3:
                    zero3_params.regather_persistent(self.model)
                total_loss, total_tokens = dist.sum_over_ranks([loss_sum, tokens])
                self.step += 1
                step_time = timer.lap()
                mean_loss = total_loss / targets
                self.bad_total += bad
                self.bad_streak = self.bad_streak + 1 if bad else 0
                if bad and self.suspect_from is None:
                    # The state the failing forward ran on came from the previous step's update.
                    self.suspect_from = self.step - 1
                elif not bad:
                    self.suspect_from = None  # a finite forward on the current state: it is sound
                record = {"kind": "train", "step": self.step, "loss": mean_loss, "lr": lr,
                          "tokens_per_s": total_tokens / step_time, "step_time_s": step_time,
                          "skipped": bad, **memory_stats()}
                metrics.log(record)
                self._notify("on_step_end", record)
                progress.update(mean_loss, lr, total_tokens / step_time)
                if bad:
                    progress.write(f"step {self.step}: non-finite loss or gradients, update skipped "
                                   f"({self.bad_streak} in a row, {self.bad_total} in total)")
                    if self.bad_streak >= cfg.max_bad_steps:
                        raise TrainingDiverged(self.divergence_message(
                            f"{self.bad_streak} consecutive steps had a non-finite loss or gradients (up to "
                            f"step {self.step})"))
                last = self.step == plan.total_steps
                if self.evaluates and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                    self.evaluate_and_log(metrics)
                    progress.write(describe_eval(self.history[-1]))
                    if not math.isfinite(self.history[-1]["loss"]):
                        raise TrainingDiverged(self.divergence_message(
                            f"the evaluation at step {self.step} gave a non-finite loss "
                            f"({self.history[-1]['loss']})", suspect_from=self.suspect_from or self.step))
                    timer.lap()  # eval time is not step time
                if (cfg.save_every and self.step % cfg.save_every == 0) or last or stop:
                    # During a streak of skipped steps the newest checkpoint stays the last good one.
                    if not bad:
                        self.save_checkpoint()
                    timer.lap()
                if stop and not last:
                    progress.close()
                    saved = f"checkpoint at step {self.step} written" if not bad else \
                        "no checkpoint written (the last steps were skipped)"
                    self.log(f"stop requested ({self._stop.signal_name or 'signal on another rank'}): {saved}; "
                             f"exiting with {PREEMPTED_EXIT_CODE} (resume with --resume auto)")
                    dist.barrier()
                    return PREEMPTED_EXIT_CODE
        finally:
            progress.close()
            metrics.close()
        return 0

    def trainable_finite(self) -> bool:
        """Whether every trainable tensor is finite (they are small and whole on every rank)."""
        return all(bool(torch.isfinite(param).all()) for param in self.model.parameters() if param.requires_grad)

    def divergence_message(self, what: str, suspect_from: int | None = None) -> str:
        """Why the run stops, and the checkpoint to trust: the newest one written before the update
        that started the divergence (a later one may hold parameters that are finite but broken)."""
        suspect_from = suspect_from if suspect_from is not None else self.suspect_from
        complete, _ = ckpt.list_checkpoints(self.run_dir)
        good = [c for c in complete if suspect_from is None or c.step < suspect_from]
        # A run started from another directory's checkpoint: that one is sound if it came first.
        started_from = self.plan.resume.checkpoint
        if started_from is not None and (suspect_from is None or started_from.step < suspect_from):
            if not good or good[-1].step < started_from.step:
                good.append(started_from)
        where = (f"the last good checkpoint is {good[-1].path} (step {good[-1].step})" if good
                 else f"no checkpoint in {self.run_dir.checkpoints} is from before the divergence")
        return (f"the training diverged: {what}; stopping without saving this state (no adapter, no merged "
                f"export), and {where}. Lower --lr (or raise --warmup_steps), enable --grad_clip, or check "
                "the data, and train again in a new --output_dir")

    def save_checkpoint(self) -> None:
        # "settings": what this checkpoint trained under, compared by --resume auto even when
        # run_config.json has gone.
        state = {"data": self.batches.state_dict(), "bad_streak": self.bad_streak, "bad_total": self.bad_total,
                 "world_size": self.world_size, "global_batch": self.plan.global_batch,
                 "settings": self.plan.settings}
        ckpt.save_checkpoint(self.run_dir, self.step, self.engine, self.model, self.trainable_names, state,
                             self.cfg.keep_last, self.rank, log=self.log)

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates at all: it has eval data and --eval_batches is not 0."""
        return self.plan.data.eval is not None and self.cfg.eval_batches != 0

    def evaluate_and_log(self, metrics: MetricsLog) -> None:
        record = evaluate(self.engine, self.plan, self.classification_records, self.cfg.eval_batches,
                          self.rank, self.world_size, self.step)
        self.history.append(record)
        metrics.log(record)
        if self.cfg.eval_generate:
            metrics.log(sample_generations(self.engine, self.plan, self.cfg.eval_generate, self.world_size,
                                           self.step))

    # --- 6. save: adapter, plot, finished run config, merged export -------------------------

    def save(self) -> int:
        """Returns the exit status: 0, or 1 when only the merged export failed."""
        cfg, plan = self.cfg, self.plan
        frozen = None
        zero3_params.settle_parameters(self.engine, self.model)
        if cfg.verify_frozen:
            from .distributed.frozen import verify_frozen

            frozen = verify_frozen(self.model, plan.model_path)
            ok = not frozen["mismatched"]
            self.log(f"frozen base weights vs {plan.model_path}: {frozen['checked']} tensors checked, "
                     f"{'all identical' if ok else str(len(frozen['mismatched'])) + ' DIFFER'}")
            self.param_report["frozen_verify"] = frozen
        if self.rank == 0:
            adapter_dir = self.run_dir.adapter
            if cfg.method == "lora":
                self.model.save_pretrained(adapter_dir)
            else:
                save_adapter(self.model, adapter_dir)
            if plan.data.chat_template is not None:
                # The template the chat data was rendered with travels with the adapter (and into
                # the merged export), so generation uses the same turns as training.
                (adapter_dir / CHAT_TEMPLATE_NAME).write_text(plan.data.chat_template, encoding="utf-8")
            if frozen is not None:
                write_json_atomically(self.run_dir.param_report, self.param_report)
            plot = plot_losses(self.run_dir)
            elapsed = time.perf_counter() - self.started
            summary = self.summary()
            self.write_run_config(finished=True, final_step=self.step, bad_steps=self.bad_total,
                                  final_eval=self.history[-1] if self.history else None,
                                  wall_time_s=round(elapsed, 1))
            self.log(f"adapter saved in {adapter_dir}" + (f"; loss plot {plot}" if plot else ""))
            self.log(summary + f" (wall time {elapsed:.0f} s)")
        # The merged export streams the whole base model from disk on rank 0 alone and may take
        # longer than a collective timeout: leave the process group first (the heartbeat, which
        # uses its store, stops before it).
        dist.barrier()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        dist.shutdown()
        if self.rank == 0 and cfg.export:
            return self.export_merged()
        return 0

    def summary(self) -> str:
        """First and last eval of the whole run (a resumed run reads its earlier evals back)."""
        evals = [r for r in read_metrics(self.run_dir.metrics) if r.get("kind") == "eval"]
        if not evals:
            return f"finished {self.step} steps"
        first, last = evals[0], evals[-1]
        text = f"finished {self.step} steps: eval loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f}"
        if "accuracy" in last:
            text += f"; eval accuracy {first.get('accuracy', float('nan')):.3f} (step {first['step']}) -> " \
                    f"{last['accuracy']:.3f} (step {last['step']})"
        return text

    def complete_finished_run(self) -> int:
        """This run finished before. Its merged export is written if it is missing or was cut short
        (a job killed after "adapter saved" and requeued, or --export true on a run trained with
        --export false); otherwise there is nothing to do."""
        from .export.provenance import is_own_export
        from .export.staging import temp_dir_for

        merged = self.run_dir.merged
        if self.rank != 0 or not self.cfg.export or self.cfg.method not in MERGEABLE_METHODS:
            return 0
        if is_own_export(merged) and not temp_dir_for(merged).exists():
            return 0
        self.log(f"the merged export in {merged} is missing or incomplete: writing it")
        return self.export_merged()

    def export_merged(self) -> int:
        if self.cfg.method not in MERGEABLE_METHODS:
            self.log(f"merged export skipped: only LoRETTA_rep updates can be merged (method {self.cfg.method})")
            return 0
        from .export import export_run_merged

        try:
            out = export_run_merged(self.run_dir, warn=self.log)
        except (ValueError, FileNotFoundError, OSError) as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 1
        self.log(f"merged model exported to {out}")
        return 0


def run_training(cfg: TrainConfig) -> int:
    """Train ``cfg``; returns 0, or PREEMPTED_EXIT_CODE after a signal (checkpoint written)."""
    return Trainer(cfg).run()
