"""Drawing only: the table and live output (`render`, `richrender`) and the JSON documents
(`statusjson`) of what the rest of the package computes. Nothing here decides anything."""
