"""Study defaults (docs/science.md): one point of the N×D grid at L12-D768 with uniform noise.

Every other experiment starts from `get_config()` here and changes what differs. Dimensions:
V vocab, L layers, D width, H heads, S sequence length, B sequences per optimizer step.
"""

from ml_collections import ConfigDict

from dlmjax.data import default_data_config


def get_config():
    c = ConfigDict()
    c.name = "base"  # shown in logs and written to the workdir's config.json
    c.seed = 0  # parameter init, noise and data order all derive from it
    c.objective = "diffusion"  # "diffusion" or "autoregressive" (causal baseline, same model)

    c.model = ConfigDict()
    c.model.vocab_size = 131072  # V; the study's BPE (BOS 0, EOS 1, PAD 2, MASK 3)
    c.model.num_layers = 12  # L
    c.model.d_model = 768  # D
    c.model.num_heads = 0  # H; 0 = D / head_dim with head_dim 64 (D ≤ 1024) or 128
    c.model.seq_len = 2048  # S
    c.model.dtype = "bfloat16"  # activations and matmuls; norms, softmax and loss stay float32
    c.model.param_dtype = "float32"  # master weights (bf16 rounding would swallow η/D updates)
    c.model.remat = "full"  # "none", "full" or "dots": what the backward pass recomputes
    c.model.attention = "dense"  # implementation of the attention core
    # Forward-pass options of the study's released checkpoint format; the defaults are our model.
    c.model.head_dim = 0  # 0 = D / H
    c.model.resid_scale = 4.0  # residual branches are multiplied by resid_scale / L
    c.model.head_scaling = 0.0  # head output multiplier; 0 = 512 / D (CompleteP)
    c.model.weight_scaling = "none"  # projection outputs × "fan_in"^−½, "fan_out"^−½ or a number
    c.model.mlp_bias = True  # biases of the MLP's up and down projections
    c.model.attention_sink = True  # the learned per-head key/value sink
    c.model.qk_norm = True  # RMSNorm over the whole q and k before splitting heads
    c.model.attn_softcap = 30.0  # attention logits → cap·tanh(logits / cap)
    c.model.rope_theta = 1e4
    c.model.norm_eps = 1e-6

    c.noise = ConfigDict()
    c.noise.type = "uniform"  # masked, low_uniform, balanced, high_uniform or uniform
    c.noise.scale = 1.0  # a in π_λ = σ(aλ + b)·u + (1 − σ(aλ + b))·e_mask
    # Share of sequences with one λ per token: 0.2 as in the code that produced the published
    # laws (the paper's text says 0.5). They train but are left out of the logged `elbo`.
    c.noise.per_token_fraction = 0.2
    c.noise.prompt_fraction = 0.2  # sequences that keep a clean prefix (prompt conditioning)
    c.noise.loss_aggregation = "sum"  # "sum" over each sequence's tokens, or "mean" per token
    c.noise.chunk_size = 256  # tokens per chunk of the fused head + loss (memory ~ chunk·V)

    c.optim = ConfigDict()
    c.optim.lr = 0.3  # η; weight matrices get η/D, the rest 0.02·η
    c.optim.warmup_steps = 2000  # linear warm-up
    c.optim.cooldown_fraction = 0.0  # final share of steps decayed as 1 − √(k/K); sweeps use 0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.0  # 0 = derive: 0.99, or 0.98 from 256 sequences per batch
    c.optim.weight_decay = 0.0  # decoupled, on weight matrices
    c.optim.clip_norm = 0.0  # global-norm clipping; 0 = off, as in the study

    c.train = ConfigDict()
    c.train.batch_size = 64  # B, sequences per optimizer step (global, all processes)
    c.train.microbatches = 1  # gradient accumulation: B is split into this many passes
    c.train.steps = 0  # optimizer steps; 0 = derive from train.tokens
    c.train.tokens = 0  # training tokens D; used when train.steps is 0
    c.train.log_every = 50  # steps between metric lines (JSONL, TensorBoard, progress bar)
    c.train.eval_every = 1000  # steps between held-out ELBO evaluations; 0 = only at the end
    c.train.eval_batches = 8  # held-out batches per evaluation
    c.train.checkpoint_every = 1000  # steps between checkpoints (one is also written at the end)
    c.train.keep_checkpoints = 3  # the newest k are kept
    c.train.peak_flops_per_device = 0.0  # FLOP/s of one device for MFU; 0 = measure a matmul
    c.train.wandb_project = ""  # Weights & Biases project; "" = no W&B (pip install wandb)
    c.train.wandb_entity = ""  # W&B team or user; "" = your default entity
    c.train.wandb_run_name = ""  # "" = the experiment name; the run id stays in the workdir
    c.train.profile_steps = ""  # "A-B" or "A": jax.profiler trace of those steps; "" = none

    c.sample = ConfigDict()
    c.sample.num_samples = 4  # texts printed and saved at the end of training (and --mode=sample)
    # "ancestral" (exact posterior), "adaptive" (confidence), "threshold" (confident positions in
    # parallel), "entropy_bound" (low-entropy positions in parallel), "remask" (ReMDM)
    c.sample.method = "ancestral"
    c.sample.steps = 256  # denoising steps (per block when block_size is set)
    c.sample.schedule = "cosine"  # λ schedule: "cosine" or "linear"
    c.sample.temperature = 1.0  # on x̂; 0 = greedy (adaptive)
    c.sample.top_p = 1.0  # nucleus on x̂; 1 = off
    c.sample.float64 = True  # float64 categorical draws (float32 ones bias the samples)
    c.sample.length = 0  # tokens per sample; 0 = model.seq_len
    c.sample.block_size = 0  # semi-autoregressive blocks; 0 = the whole sample at once
    c.sample.confidence_threshold = 0.9  # threshold: commit positions with x̂ at least this
    c.sample.entropy_bound = 1.0  # entropy_bound: nats of summed entropy committed per step
    c.sample.remask_schedule = "cap"  # remask: σ schedule "cap", "rescale" or "loop"
    c.sample.remask_eta = 0.02  # remask: η of the σ schedule

    c.eval = ConfigDict()
    c.eval.grid_points = 32  # λ grid (linear in α) of the deterministic held-out ELBO
    c.eval.batches = 8  # held-out batches of --mode=eval

    c.mesh = ConfigDict()
    c.mesh.data = -1  # pure data-parallel axis; -1 = all devices left over
    c.mesh.fsdp = 1  # data parallel with sharded parameters and optimizer state
    c.mesh.tensor = 1  # heads, MLP and vocabulary split
    c.mesh.strategy = "fsdp"  # logical-axis rule table: dp, fsdp or fsdp_tp
    c.mesh.num_devices = 0  # devices the run is planned for (describe fakes them on CPU); 0 = any

    c.data = default_data_config()
    return c
