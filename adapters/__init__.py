"""Adapters: how chat platforms (and the console) reach the core, plus the `sdbot` CLI.

Each adapter translates its platform's events into `bot.dispatcher.Dispatcher` calls and
implements `bot.ports.ChatAdapter` for the core's messages back.
"""
