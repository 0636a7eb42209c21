"""Authoring tools: lints, inline examples, explain, plan diffs, the JSON Schema and drafted rule files."""
