"""Fine-tuning tasks: datasets (embedded, Hub, local with column mapping) and one adapter per task."""
