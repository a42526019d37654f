"""Sandbox servers that speak each ad platform's wire protocol on 127.0.0.1, for tests and demos."""
