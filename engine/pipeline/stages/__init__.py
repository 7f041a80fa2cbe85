"""The stages of a pipeline run, one module each; every module here is imported by
:func:`engine.pipeline.stage.discover`, so a new stage (embed, select, train, predict ...) plugs in by
adding a module that defines a :class:`~engine.pipeline.stage.Stage` subclass with a ``name``. The stages
here declare themselves with :class:`~engine.pipeline.stages._base.DeclaredStage` (the declaration as the
class statement's keywords) and take a blockwise run's options from :func:`~engine.pipeline.stages._base.blockwise_options`."""
