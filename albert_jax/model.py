"""ALBERT in Flax linen: factorised embeddings, one shared layer under `nn.scan`, MLM + SOP heads.

The computation matches the released ALBERT models (and Hugging Face's
`AlbertForPreTraining`) exactly; tests/test_model.py checks logits against it.
Every parameter carries logical axis names so that `albert_jax.sharding` can
place it on any device mesh.
"""

import dataclasses
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from albert_jax import attention as attention_lib

SHARING_MODES = ("all", "attention", "ffn", "none")
ACTIVATIONS = {
  "gelu_new": functools.partial(nn.gelu, approximate=True),  # tanh approximation: every released model
  "gelu": functools.partial(nn.gelu, approximate=False),  # exact erf
  "relu": nn.relu,
}
# `checkpoint_name` tags in the layer (AlbertAttention, AlbertFeedForward): what a named remat policy may keep.
PROJECTIONS = ("query", "key", "value")  # [B, T, heads, head_dim] each
ATTENTION_OUTPUT = "attention_output"  # the output projection of the context, [B, Q, H]
FFN_INNER = "ffn_inner"  # the FFN's H→I product before the activation, [B, Q, I]: the widest activation
FFN_OUTPUT = "ffn_output"  # the FFN's I→H product, [B, Q, H]
ATTENTION_TAGS = (*PROJECTIONS, attention_lib.CONTEXT, *attention_lib.SOFTMAX_STATS, ATTENTION_OUTPUT)
_keep = jax.checkpoint_policies.save_only_these_names
# Which of a layer's tensors the backward pass keeps (the rest it recomputes from the layer's input), from the
# least recomputation to the most. Per token of one layer the products cost, in units of H² multiply-adds:
# query/key/value 3, attention output 1, FFN 2·I/H (8 in every preset), the attention itself 2·T/H.
# benchmarks/TPU_COMPILE.md gives, per pod config, the first policy that fits with 10% of HBM to spare.
REMAT_POLICIES = {
  "none": None,  # no rematerialisation: everything kept
  # every matmul output (the XLA path's [T, T] scores too) and the flash kernel's residuals; on XLA:CPU 9-17%
  # faster than "none" with 44% of its activation memory (benchmarks/NOTES.md §8)
  "dots": jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.checkpoint_dots, _keep(attention_lib.CONTEXT, *attention_lib.SOFTMAX_STATS)
  ),
  "save_all": _keep(*ATTENTION_TAGS, FFN_INNER, FFN_OUTPUT),  # every tagged tensor; no [T, T] array
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # projections; attention recomputed
  "save_qkv_ffn": _keep(*PROJECTIONS, FFN_INNER, FFN_OUTPUT),  # the attention and its output projection recomputed
  "save_attention": _keep(*ATTENTION_TAGS, FFN_OUTPUT),  # the FFN's H→I product and activation recomputed
  "save_ffn": _keep(FFN_INNER, FFN_OUTPUT),  # the attention block recomputed
  "full": jax.checkpoint_policies.nothing_saveable,  # the whole layer recomputed
}

# Released ALBERT shapes (google-research/albert, v2). v1 differs only in dropout.
_PRESET_SHAPES = {
  "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
  "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
  "xlarge": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
  "xxlarge": dict(hidden_size=4096, num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384),
}


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
  """Model hyperparameters; field names follow Hugging Face's `AlbertConfig`."""

  vocab_size: int = 30000
  embedding_size: int = 128  # E: width of the factorised embeddings
  hidden_size: int = 768  # H
  num_hidden_layers: int = 12  # L: applications of the shared layer (group)
  num_hidden_groups: int = 1  # G: parameter groups; layer i uses group int(i*G/L)
  inner_group_num: int = 1  # distinct layers applied in sequence inside a group
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu_new"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  classifier_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  sharing: str = "all"  # the paper's Table 4 ablation: all | attention | ffn | none
  # Compute dtype: "bfloat16" computes the products and activations in bfloat16 while parameters, optimizer
  # state, LayerNorm statistics, the softmax and the losses stay float32 (the pod experiments); "float32" on CPU.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # One of REMAT_POLICIES. "dots" keeps matmul outputs and recomputes the elementwise ops in the backward pass:
  # on XLA:CPU 9-17% faster than "none" with 44% of its activation memory (benchmarks/NOTES.md §8).
  remat_policy: str = "dots"
  # "xla" (einsums around a float32 softmax) or "flash" (Pallas on TPU, cuDNN on GPU; the XLA path elsewhere and
  # in training steps with attention dropout): albert_jax/attention.py
  attention: str = "xla"
  scan_unroll: int = 1  # layers unrolled per scan iteration (speed vs compile time)

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
        f"({self.num_attention_heads}); pick a head count that divides it."
      )
    if self.sharing not in SHARING_MODES:
      raise ValueError(f"sharing={self.sharing!r} is not one of {SHARING_MODES}.")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {list(REMAT_POLICIES)}.")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"attention={self.attention!r} is not one of {attention_lib.IMPLEMENTATIONS}.")
    groups = self.num_hidden_groups
    if groups < 1 or self.num_hidden_layers % groups:
      raise ValueError(
        f"num_hidden_layers ({self.num_hidden_layers}) must be a multiple of num_hidden_groups ({groups})."
      )
    if self.sharing != "all" and (groups != 1 or self.inner_group_num != 1):
      raise ValueError(f"sharing={self.sharing!r} needs num_hidden_groups=1 and inner_group_num=1.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def preset(cls, name: str, **overrides) -> "AlbertConfig":
    """`base`, `large`, `xlarge`, `xxlarge` (v2: no dropout) or `<size>-v1` (dropout 0.1, none for xxlarge)."""
    size, _, version = name.partition("-")
    if size not in _PRESET_SHAPES or version not in ("", "v1", "v2"):
      known = [f"{s}{v}" for s in _PRESET_SHAPES for v in ("", "-v1", "-v2")]
      raise ValueError(f"Unknown ALBERT preset {name!r}; choose one of {known}.")
    dropout = 0.1 if version == "v1" and size != "xxlarge" else 0.0
    fields = dict(_PRESET_SHAPES[size], hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return cls(**{**fields, **overrides})

  def replace(self, **changes) -> "AlbertConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "AlbertConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown AlbertConfig fields {unknown}; known fields are {sorted(known)}.")
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _kernel_init(config: AlbertConfig, names: tuple[str | None, ...]):
  # ALBERT's truncated normal: std 0.02, cut at two standard deviations.
  init = nn.initializers.truncated_normal(stddev=config.initializer_range, lower=-2.0, upper=2.0)
  return nn.with_logical_partitioning(init, names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _dense(config, features, names, name, **kwargs):
  return nn.Dense(
    features,
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    name=name,
    kernel_init=_kernel_init(config, names),
    bias_init=_zeros(names[-1:]),
    **kwargs,
  )


def _layer_norm(config, axis_name, name):
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    name=name,
    scale_init=_ones((axis_name,)),
    bias_init=_zeros((axis_name,)),
  )


class AlbertEmbeddings(nn.Module):
  """Word + position + token-type embeddings at width E, LayerNorm, dropout."""

  config: AlbertConfig

  def setup(self):
    cfg = self.config
    embed = functools.partial(nn.Embed, features=cfg.embedding_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.word_embeddings = embed(cfg.vocab_size, embedding_init=_kernel_init(cfg, ("vocab", "embed")))
    self.position_embeddings = embed(cfg.max_position_embeddings, embedding_init=_kernel_init(cfg, (None, "embed")))
    self.token_type_embeddings = embed(cfg.type_vocab_size, embedding_init=_kernel_init(cfg, (None, "embed")))
    self.LayerNorm = _layer_norm(cfg, "embed", "LayerNorm")
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, deterministic):
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = (
      self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
    )
    return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class AlbertAttention(nn.Module):
  """Multi-head self-attention followed by the post-LN residual: LayerNorm(x + dropout(dense(context)))."""

  config: AlbertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, positions=None):
    """`mask` [B, T]: 1 at real tokens, 0 at padding; `positions` [B, P]: queries (and the output) only there;
    keys and values still from all of `x`."""
    cfg = self.config
    heads = (cfg.num_attention_heads, cfg.head_dim)
    x_q = x if positions is None else gather_positions(x, positions)
    q, k, v = (
      checkpoint_name(_Projection(cfg, (cfg.hidden_size,), heads, ("hidden",), ("heads", "kv"), name=n)(y), n)
      for n, y in zip(PROJECTIONS, (x_q, x, x))
    )
    attention_dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
    dropout = None
    if cfg.attention_probs_dropout_prob > 0 and not self.deterministic:
      dropout = lambda probs: attention_dropout(probs, deterministic=False)
    context = attention_lib.attention(q, k, v, mask, cfg.attention, dropout)
    out = _Projection(cfg, heads, (cfg.hidden_size,), ("heads", "kv"), ("hidden",), name="dense")(context)
    out = checkpoint_name(out, ATTENTION_OUTPUT)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=self.deterministic)
    return _layer_norm(cfg, "hidden", "LayerNorm")(x_q + out)


class _Projection(nn.Module):
  """A dense layer between multi-axis shapes, e.g. [H] → [heads, head_dim].

  The kernel is created in its final shape, so its logical names always match
  its rank (flax's DenseGeneral initialises a flattened kernel, which breaks
  sharding constraints under a mesh).
  """

  config: AlbertConfig
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param(
      "kernel", _kernel_init(cfg, self.in_names + self.out_names), self.in_shape + self.out_shape, cfg.param_dtype
    )
    bias = self.param("bias", _zeros(self.out_names), self.out_shape, cfg.param_dtype)
    n_in = len(self.in_shape)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(cfg.dtype), kernel.astype(cfg.dtype), (contract, ((), ())))
    return y + bias.astype(cfg.dtype)


class AlbertFeedForward(nn.Module):
  """H→I→H with the configured activation and the post-LN residual."""

  config: AlbertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = checkpoint_name(_dense(cfg, cfg.intermediate_size, ("hidden", "mlp"), "ffn")(x), FFN_INNER)
    h = _dense(cfg, cfg.hidden_size, ("mlp", "hidden"), "ffn_output")(ACTIVATIONS[cfg.hidden_act](h))
    h = checkpoint_name(h, FFN_OUTPUT)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=self.deterministic)
    return _layer_norm(cfg, "hidden", "full_layer_layer_norm")(x + h)


class AlbertLayerGroup(nn.Module):
  """`inner_group_num` layers (attention + FFN) in sequence; the unit that `nn.scan` repeats.

  With `sharing='attention'` or `'ffn'` the shared block's parameters arrive as
  `shared_params` (broadcast over the scan) while this module owns only the
  per-layer block, which the scan stacks.
  """

  config: AlbertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, shared_params, positions=None):
    """`positions` [B, P]: the group's last layer computes its output only there (see AlbertEncoder)."""
    cfg = self.config
    attention = functools.partial(AlbertAttention, cfg, deterministic=self.deterministic)
    ffn = functools.partial(AlbertFeedForward, cfg, deterministic=self.deterministic)
    for j in range(cfg.inner_group_num):
      name = f"layer_{j}"
      where = positions if j == cfg.inner_group_num - 1 else None
      if cfg.sharing == "attention":
        x = _apply_shared(self, attention(parent=None), shared_params, x, mask, where)
        x = ffn(name=f"{name}_ffn")(x)
      elif cfg.sharing == "ffn":
        x = attention(name=f"{name}_attention")(x, mask, where)
        x = _apply_shared(self, ffn(parent=None), shared_params, x)
      else:
        x = attention(name=f"{name}_attention")(x, mask, where)
        x = ffn(name=f"{name}_ffn")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_hidden"))
    return x, None


def _apply_shared(parent: nn.Module, block: nn.Module, params, *args):
  rngs = {} if block.deterministic else {"dropout": parent.make_rng("dropout")}
  return block.apply({"params": params}, *args, rngs=rngs)


def _abstract_input(config):
  return jnp.zeros((1, 1, config.hidden_size), config.dtype)


class AlbertEncoder(nn.Module):
  """E→H projection, then the shared layer group applied L times with `nn.scan`.

  Compile time is independent of L: the layer is traced once. Groups
  (`num_hidden_groups` > 1) are a second, outer scan over stacked parameters.
  """

  config: AlbertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic=True, positions=None):
    """[B, T, E] → [B, T, H]; with `positions` [B, P], the output at those positions only, [B, P, H].

    With one shared layer (the released models) and `positions`, the scan runs
    L-1 layers and the last one computes queries, attention output and FFN at
    the P positions alone (keys and values from every position): the same
    numbers as the full encoder followed by a gather, without the last layer's
    work at positions nobody reads (pretraining reads only [CLS] and the masks).
    """
    cfg = self.config
    x = _dense(cfg, cfg.hidden_size, ("embed", "hidden"), "embedding_hidden_mapping_in")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_hidden"))
    shared = self._shared_block_params()
    body = _layer_body(cfg)
    if positions is not None and gathers_last_layer(cfg):
      layers = _broadcast_scan(body, cfg, cfg.num_hidden_layers - 1)
      x = layers(cfg, deterministic=deterministic, name="layer_group")(x, mask, shared)[0]
      last = AlbertLayerGroup(cfg, deterministic, parent=None)
      return _apply_shared(self, last, self.variables["params"]["layer_group"], x, mask, shared, positions)[0]
    if cfg.sharing == "all" and cfg.num_hidden_groups == 1:
      layers = _broadcast_scan(body, cfg, cfg.num_hidden_layers)
    else:
      # Stacked parameters: one slice per group (sharing='all') or per layer (the other modes).
      if cfg.sharing == "all":
        body, length = _ScanGroup, cfg.num_hidden_groups
      else:
        length = cfg.num_hidden_layers
      layers = nn.scan(
        body,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=length,
        unroll=cfg.scan_unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
    x = layers(cfg, deterministic=deterministic, name="layer_group")(x, mask, shared)[0]
    return x if positions is None else gather_positions(x, positions)

  def _shared_block_params(self):
    """Parameters of the block that `sharing='attention'|'ffn'` shares across the stacked layers."""
    cfg = self.config
    if cfg.sharing == "attention":
      block, args = AlbertAttention(cfg, parent=None), (_abstract_input(cfg), jnp.ones((1, 1), jnp.int32))
    elif cfg.sharing == "ffn":
      block, args = AlbertFeedForward(cfg, parent=None), (_abstract_input(cfg),)
    else:
      return None
    return self.param(f"shared_{cfg.sharing}", lambda rng: block.init(rng, *args)["params"])


def gathers_last_layer(config: AlbertConfig) -> bool:
  """Whether `AlbertEncoder` runs the last layer at the requested positions only (else: all, then a gather)."""
  return config.sharing == "all" and config.num_hidden_groups == 1 and config.num_hidden_layers > 1


def _layer_body(config):
  """The scanned unit, rematerialised with the configured policy."""
  if config.remat_policy == "none":
    return AlbertLayerGroup
  return nn.remat(AlbertLayerGroup, prevent_cse=False, policy=REMAT_POLICIES[config.remat_policy])


def _broadcast_scan(body, config, length):
  """`body` applied `length` times with ONE parameter set (`variable_broadcast='params'`)."""
  return nn.scan(
    body,
    variable_broadcast="params",
    split_rngs={"params": False, "dropout": True},
    in_axes=(nn.broadcast, nn.broadcast),
    length=length,
    unroll=config.scan_unroll,
  )


class _ScanGroup(nn.Module):
  """One parameter group of `num_hidden_groups`: its L/G consecutive layers share parameters."""

  config: AlbertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, shared):
    cfg = self.config
    layers = _broadcast_scan(_layer_body(cfg), cfg, cfg.num_hidden_layers // cfg.num_hidden_groups)
    return layers(cfg, deterministic=self.deterministic, name="layers")(x, mask, shared)[0], None


class AlbertModel(nn.Module):
  """The backbone: embeddings, encoder and the tanh pooler over [CLS]."""

  config: AlbertConfig
  add_pooling_layer: bool = True

  def setup(self):
    cfg = self.config
    self.embeddings = AlbertEmbeddings(cfg)
    self.encoder = AlbertEncoder(cfg)
    self.pooler = _dense(cfg, cfg.hidden_size, ("hidden", None), "pooler")

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True, output_positions=None):
    """(sequence [B, T, H], pooled [B, H]); with `output_positions` [B, P] the sequence there only, [B, P, H]."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, deterministic)
    # Padded keys are masked: albert_jax.attention adds the most negative float32 to their scores, as the original.
    if output_positions is None:
      sequence = self.encoder(x, attention_mask, deterministic)
    else:  # [CLS] (for the pooler) and the requested positions
      cls = jnp.zeros_like(output_positions[:, :1], jnp.int32)
      positions = jnp.concatenate([cls, output_positions.astype(jnp.int32)], 1)
      sequence = self.encoder(x, attention_mask, deterministic, positions)
    pooled = jnp.tanh(self.pooler(sequence[:, 0])) if self.add_pooling_layer else None
    return (sequence if output_positions is None else sequence[:, 1:]), pooled

  def attend(self, x):
    """Scores against the word embeddings: the tied MLM decoder."""
    return self.embeddings.word_embeddings.attend(x)


class AlbertMLMHead(nn.Module):
  """dense H→E, activation, LayerNorm(E); the decoder is tied to the word embeddings."""

  config: AlbertConfig

  @nn.compact
  def __call__(self, hidden, attend):
    cfg = self.config
    h = ACTIVATIONS[cfg.hidden_act](_dense(cfg, cfg.embedding_size, ("hidden", "embed"), "dense")(hidden))
    h = _layer_norm(cfg, "embed", "LayerNorm")(h)
    bias = self.param("bias", _zeros(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
    return attend(h).astype(jnp.float32) + bias.astype(jnp.float32)


def gather_positions(sequence, positions):
  """[B, T, H] at [B, P] positions → [B, P, H]."""
  return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class AlbertForPreTraining(nn.Module):
  """Backbone + MLM head (at `masked_positions` only, when given) + sentence-order head."""

  config: AlbertConfig

  def setup(self):
    self.albert = AlbertModel(self.config)
    self.predictions = AlbertMLMHead(self.config)
    # No dropout before the sentence-order classifier: run_pretraining.py's get_sentence_order_output feeds it the
    # pooled output as it is (Hugging Face's AlbertSOPHead applies classifier_dropout_prob there; the original not).
    self.sop_classifier = _Classifier(self.config, 2, dropout_prob=0.0)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, masked_positions=None, deterministic=True):
    sequence, pooled = self.albert(input_ids, attention_mask, token_type_ids, deterministic, masked_positions)
    return {
      "mlm_logits": self.predictions(sequence, self.albert.attend),
      "sop_logits": self.sop_classifier(pooled, deterministic),
    }


class _Classifier(nn.Module):
  """Dropout then a dense layer, as every ALBERT classification head (`dropout_prob` None: the config's)."""

  config: AlbertConfig
  num_outputs: int
  dropout_prob: float | None = None

  @nn.compact
  def __call__(self, x, deterministic):
    rate = self.config.classifier_dropout_prob if self.dropout_prob is None else self.dropout_prob
    x = nn.Dropout(rate)(x, deterministic=deterministic)
    return _dense(self.config, self.num_outputs, ("hidden", None), "classifier")(x).astype(jnp.float32)


class AlbertForSequenceClassification(nn.Module):
  """GLUE-style head on the pooled output; `num_labels=1` is regression (STS-B)."""

  config: AlbertConfig
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
    _, pooled = AlbertModel(self.config, name="albert")(input_ids, attention_mask, token_type_ids, deterministic)
    return _Classifier(self.config, self.num_labels, name="classifier_head")(pooled, deterministic)


class AlbertForTokenClassification(nn.Module):
  """Tagging head (NER, POS): dropout then `classifier` on every token, Hugging Face's layout (no pooler)."""

  config: AlbertConfig
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
    sequence, _ = AlbertModel(self.config, add_pooling_layer=False, name="albert")(
      input_ids, attention_mask, token_type_ids, deterministic
    )
    x = nn.Dropout(self.config.classifier_dropout_prob)(sequence, deterministic=deterministic)
    return _dense(self.config, self.num_labels, ("hidden", None), "classifier")(x).astype(jnp.float32)


class AlbertForQuestionAnswering(nn.Module):
  """SQuAD span head: start and end logits per token ([CLS] scores the null answer)."""

  config: AlbertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
    sequence, _ = AlbertModel(self.config, add_pooling_layer=False, name="albert")(
      input_ids, attention_mask, token_type_ids, deterministic
    )
    logits = _dense(self.config, 2, ("hidden", None), "qa_outputs")(sequence).astype(jnp.float32)
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


# The original's masking of impossible positions: x * (1 - p) - 1e30 * p, in float32 (p_mask 1 = not a candidate).
_NOT_A_CANDIDATE = 1e30


def _mask_logits(logits, p_mask):
  p = p_mask.astype(jnp.float32)
  return logits.astype(jnp.float32) * (1.0 - p) - _NOT_A_CANDIDATE * p


class _ConcatDense(nn.Module):
  """dense([a ; b]) with one [2H, H] kernel (rows [:H] for `a`), computed as a·K[:H] + b·K[H:] so that `a` and `b`
  broadcast against each other (the [B, K, T, 2H] concatenation is never built)."""

  config: AlbertConfig
  use_bias: bool = True

  @nn.compact
  def __call__(self, a, b):
    cfg = self.config
    width = a.shape[-1]
    kernel = self.param(
      "kernel", _kernel_init(cfg, ("hidden", None)), (width + b.shape[-1], cfg.hidden_size), cfg.param_dtype
    )
    kernel = kernel.astype(cfg.dtype)
    out = a.astype(cfg.dtype) @ kernel[:width] + b.astype(cfg.dtype) @ kernel[width:]
    if self.use_bias:
      out = out + self.param("bias", _zeros((None,)), (cfg.hidden_size,), cfg.param_dtype).astype(cfg.dtype)
    return out


class _EndLogits(nn.Module):
  """The end score of every token given a start state: dense_1(LayerNorm(tanh(dense_0([h_j ; h_start]))))."""

  config: AlbertConfig

  @nn.compact
  def __call__(self, tokens, start_states):
    """tokens [..., T, H], start_states [..., 1, H] → [..., T] float32."""
    cfg = self.config
    x = jnp.tanh(_ConcatDense(cfg, name="dense_0")(tokens, start_states))
    x = _layer_norm(cfg, "hidden", "LayerNorm")(x)
    return _dense(cfg, 1, ("hidden", None), "dense_1")(x)[..., 0].astype(jnp.float32)


class _StartLogits(nn.Module):
  config: AlbertConfig

  @nn.compact
  def __call__(self, sequence):
    return _dense(self.config, 1, ("hidden", None), "dense")(sequence)[..., 0].astype(jnp.float32)


class _AnswerClass(nn.Module):
  """The answerability logit: dense_1(dropout(tanh(dense_0([start_feature ; cls])))), dense_1 without bias."""

  config: AlbertConfig

  @nn.compact
  def __call__(self, start_feature, cls_feature, deterministic):
    cfg = self.config
    x = jnp.tanh(_ConcatDense(cfg, name="dense_0")(start_feature, cls_feature))
    x = nn.Dropout(cfg.classifier_dropout_prob)(x, deterministic=deterministic)
    return _dense(cfg, 1, ("hidden", None), "dense_1", use_bias=False)(x)[..., 0].astype(jnp.float32)


class AlbertForQuestionAnsweringXLNet(nn.Module):
  """The original ALBERT's SQuAD 2.0 head (squad_utils.create_v2_model, after XLNet), parameter for parameter.

  Start logits per token; end logits conditioned on a start position's hidden state (the gold start in training,
  each of the `start_n_top` best starts at inference, with its `end_n_top` best ends); and an answerability logit
  from [CLS] and the start-probability-weighted hidden state, with dropout, its logit larger for "no answer in
  this window". Candidates are the positions where `p_mask` is 0 ([CLS] and the context). Parameters:
  start_logits/dense, end_logits/{dense_0, LayerNorm, dense_1}, answer_class/{dense_0, dense_1 (no bias)}, the
  TensorFlow variable names; the backbone is `albert` without its pooler.
  """

  config: AlbertConfig
  start_n_top: int = 5
  end_n_top: int = 5

  @nn.compact
  def __call__(
    self, input_ids, attention_mask=None, token_type_ids=None, p_mask=None, start_positions=None, deterministic=True
  ):
    """With `start_positions` [B] (training): start_log_probs, end_log_probs [B, T] and cls_logits [B]. Without:
    start_top_log_probs, start_top_index [B, K], end_top_log_probs, end_top_index [B, K*K'] (start-major: entry
    i*K' + j is the j-th best end for the i-th best start) and cls_logits [B]."""
    cfg = self.config
    sequence, _ = AlbertModel(cfg, add_pooling_layer=False, name="albert")(
      input_ids, attention_mask, token_type_ids, deterministic
    )
    p_mask = jnp.zeros_like(input_ids) if p_mask is None else p_mask
    start = _mask_logits(_StartLogits(cfg, name="start_logits")(sequence), p_mask)
    start_log_probs = jax.nn.log_softmax(start, -1)
    end_logits = _EndLogits(cfg, name="end_logits")
    if start_positions is not None:  # teacher forcing: the gold start's state
      start_states = gather_positions(sequence, start_positions[:, None])  # [B, 1, H]
      end_log_probs = jax.nn.log_softmax(_mask_logits(end_logits(sequence, start_states), p_mask), -1)
      out = {"start_log_probs": start_log_probs, "end_log_probs": end_log_probs}
    else:
      top_log_probs, top_index = jax.lax.top_k(start_log_probs, self.start_n_top)  # [B, K]
      start_states = gather_positions(sequence, top_index)[:, :, None]  # [B, K, 1, H]
      end = _mask_logits(end_logits(sequence[:, None], start_states), p_mask[:, None])  # [B, K, T]
      end_top_log_probs, end_top_index = jax.lax.top_k(jax.nn.log_softmax(end, -1), self.end_n_top)  # [B, K, K']
      batch = input_ids.shape[0]
      out = {
        "start_top_log_probs": top_log_probs,
        "start_top_index": top_index,
        "end_top_log_probs": end_top_log_probs.reshape(batch, -1),
        "end_top_index": end_top_index.reshape(batch, -1),
      }
    # Answerability: [CLS] and the hidden states weighted by the predicted start distribution (also in training).
    start_feature = jnp.einsum("bt,bth->bh", jax.nn.softmax(start, -1), sequence.astype(jnp.float32))
    out["cls_logits"] = _AnswerClass(cfg, name="answer_class")(start_feature, sequence[:, 0], deterministic)
    return out


class AlbertForMultipleChoice(nn.Module):
  """RACE-style head: inputs [B, C, T]; one score per choice from the pooled output."""

  config: AlbertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
    batch, choices, length = input_ids.shape
    flat = lambda a: None if a is None else a.reshape(batch * choices, length)
    _, pooled = AlbertModel(self.config, name="albert")(
      flat(input_ids), flat(attention_mask), flat(token_type_ids), deterministic
    )
    return _Classifier(self.config, 1, name="classifier_head")(pooled, deterministic).reshape(batch, choices)


def for_head(head: str, config: AlbertConfig, num_labels: int = 2, start_n_top: int = 5, end_n_top: int = 5):
  """The task model of a fine-tuning head (`tasks.TaskSpec.head`); its `albert` submodule is the backbone.

  `num_labels`: the classifier's outputs (1 for regression); `start_n_top`, `end_n_top`: the XLNet span head's beam.
  """
  if head == "span":
    return AlbertForQuestionAnswering(config)
  if head == "span_xlnet":
    return AlbertForQuestionAnsweringXLNet(config, start_n_top, end_n_top)
  if head == "multiple_choice":
    return AlbertForMultipleChoice(config)
  if head == "tagging":
    return AlbertForTokenClassification(config, num_labels)
  return AlbertForSequenceClassification(config, num_labels)
