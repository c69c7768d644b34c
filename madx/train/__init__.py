"""The offline half of madx-serve: everything that makes and measures the adapters the server loads.

The model library in ``madx/`` (configs, layers, the model, backbones, artifacts, features, decoding)
is what the server imports; this package builds on it and is never imported by ``serving/``:

- ``data``, ``corpus``: readers for labelled data and the unlabelled text of each language.
- ``loop``: the resumable training loop; ``masked_lm``, ``mlm``, ``head_fit``: masked-LM training of
  language adapters and the frozen MLM head; ``task_steps``: NER and QA task-adapter training.
- ``evaluate``, ``metrics``: zero-shot evaluation; ``route_evidence``, ``evidence``: the routing
  evidence the server routes by.
- ``recipe``, ``recipe_run``, ``ship``: a store described by a recipe file, rebuilt by one command.
- ``cli`` with ``train_commands`` and ``eval_commands``: the ``madx-train`` command.
"""
