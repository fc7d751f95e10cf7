"""Stage 4, model registration: versioned model + model card + metrics + lineage in a folder or
MinIO (`registry`), promoted to the `champion` alias only if it wins the gate (`gate`)."""
