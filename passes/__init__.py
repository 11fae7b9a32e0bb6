"""fxsparse's FX passes, all with one contract (torch.fx's pass infrastructure).

Each pass is a ``torch.fx.passes.infra.pass_base.PassBase``: calling it on a GraphModule
checks its preconditions (``requires``), runs it (``call``), checks its postconditions
(``ensures``) and returns ``PassResult(graph_module, modified)``. The ``node.meta`` keys
a pass writes are constants declared in its own module (``shape_prop.SHAPE``,
``channel_propagation.IDS``...); other results are attributes of the pass object::

    ShapeProp(example_inputs)(gm)            # PassResult(gm, False); node.meta[SHAPE] set
    FuseChannelShuffle()(gm).modified        # True when a shuffle was fused
    propagation = ChannelPropagation(rules)
    propagation(gm)
    propagation.context.mixing               # the analysis (an AnalysisContext)

``aten_to_torch`` (torch.export graphs -> torch-level calls), ``training_mode`` (their
dropout and batch-norm flags follow ``.train()`` / ``.eval()``), ``shape_prop``,
``fuse_channel_shuffle``, ``channel_propagation`` (analyze), ``slice_channels`` (export)
``masked_mixing`` and ``opaque_conv`` (the capacity model of the compiled step; the latter
for dynamic capacities: convolutions as custom ops whose channel counts stay symbolic).
"""
