"""fxsparse's FX passes, all with one contract (torch.fx's pass infrastructure), run by one
pass manager (:mod:`.manager`) in the pipelines composed in :mod:`.pipelines`.

Each pass is a ``torch.fx.passes.infra.pass_base.PassBase``: calling it on a GraphModule
checks its preconditions (``requires``), runs it (``call``), checks its postconditions
(``ensures``) and returns ``PassResult(graph_module, modified)``. Each also declares the
facts it ``needs`` and ``gives`` (the ``node.meta`` keys of :mod:`fxsparse.rules.meta_keys`,
``manager.TORCH_LEVEL``), which the pass manager checks before running a pipeline; other
results are attributes of the pass object::

    ShapeProp(example_inputs)(gm)            # PassResult(gm, False); node.meta[SHAPE] set
    FuseChannelShuffle()(gm).modified        # True when a shuffle was fused
    propagation = ChannelPropagation(rules)
    propagation(gm)
    propagation.context.mixing               # the analysis (an AnalysisContext)
    PassManager([ShapeProp(x), ChannelPropagation()], given={TORCH_LEVEL})(gm)  # checked order

``aten_to_torch`` (torch.export graphs -> torch-level calls), ``training_mode`` (their
dropout and batch-norm flags follow ``.train()`` / ``.eval()``), ``shape_prop``,
``fuse_channel_shuffle``, ``channel_propagation`` (analyze), ``slice_channels`` (export)
``masked_mixing`` and ``opaque_conv`` (the capacity model of the compiled step; the latter
for dynamic capacities: convolutions as custom ops whose channel counts stay symbolic).
"""
