"""Side-effecting sinks: email, SMS, the outbox, follow-up tasks; each idempotent."""
