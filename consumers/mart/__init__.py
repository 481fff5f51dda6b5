"""The analysts' mart: a sink of the pseudonymised analytics.* topics into SQL tables (facts,
supporter days, message and task outcomes), rebuilt from the topics on demand, exported as CSV
or Parquet, and drawn on the /charts page (docs/analysts.md, "The mart" and "Charts")."""
