"""Paper-scale evaluation protocols (issue 8; settings in ``docs/paper_protocols.md``).

Unlike the CPU suite (:mod:`motionrep.eval.suite`), which holds small splits in memory, these protocols stream
datasets from disk through map-style datasets (:mod:`.streams`), shard work over torchrun ranks and reduce metrics
through :mod:`motionrep.train.dist`. Protocols: segmentation readouts (:mod:`.seg_readout`), unsupervised video
segmentation (:mod:`.video_clustering`), Leopart-style unsupervised segmentation (:mod:`.unsup_seg`), in-context
retrieval on data fractions (:mod:`.incontext_fractions`) and CroCo-Flow-style finetuning (:mod:`.flow_finetune`).
"""
