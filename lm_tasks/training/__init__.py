"""Training: the one optimizer/schedule helper, the LightningModule, the pretraining recipe."""
