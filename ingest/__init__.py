"""ingest: content-defined dedup ingestion engine."""
