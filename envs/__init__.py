"""The Gymnasium pruning environment (``PruneGym/LayerPrune-v0``)."""
