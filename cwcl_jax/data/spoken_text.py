"""What cwcl_spoken says: SLURP-style spoken commands per intent, and Speech Commands words.

Intent names follow SLURP's scenario_action form and read as plain words once the
underscore is a space ("alarm set"), which zero-shot prompts rely on.
"""

from __future__ import annotations

import re

import numpy as np

# fmt: off
SLOTS: dict[str, tuple[str, ...]] = {
    "time": (
        "six am", "seven in the morning", "half past eight", "nine thirty", "noon",
        "five pm", "quarter to seven", "ten tonight", "six fifteen", "eleven o'clock",
    ),
    "date": (
        "today", "tomorrow", "on monday", "on friday", "this weekend", "next tuesday",
        "tonight", "on the third of may", "next week", "on sunday morning",
    ),
    "place": (
        "london", "paris", "new york", "tokyo", "berlin", "the airport", "the station",
        "boston", "madrid", "the city centre", "sydney", "my office",
    ),
    "room": ("kitchen", "bedroom", "living room", "bathroom", "hallway", "office", "garage"),
    "artist": (
        "the beatles", "taylor swift", "miles davis", "queen", "adele", "bach",
        "daft punk", "nina simone", "the rolling stones", "mozart",
    ),
    "genre": ("jazz", "rock", "classical music", "pop", "hip hop", "country", "blues"),
    "topic": (
        "football", "the elections", "technology", "the stock market", "science",
        "the weather in europe", "climate change", "local events", "space exploration",
    ),
    "event": (
        "the dentist", "a meeting with sarah", "mom's birthday", "the team call",
        "yoga class", "lunch with john", "the doctor's appointment", "the school concert",
    ),
    "dish": (
        "pancakes", "lasagna", "a chocolate cake", "fried rice", "tomato soup",
        "guacamole", "banana bread", "a caesar salad", "chicken curry",
    ),
    "item": (
        "milk", "eggs", "bread", "apples", "coffee", "toilet paper", "olive oil",
        "bananas", "cheese", "dish soap",
    ),
    "contact": ("john", "sarah", "my boss", "mom", "david", "the landlord", "emma", "alex"),
    "amount": ("a bit", "a lot", "by ten percent", "two steps", "slightly", "way"),
}

INTENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "alarm_set": (
        "set an alarm for {time}", "wake me up at {time}", "please set an alarm at {time}",
        "i need an alarm for {time} {date}", "alarm for {time}",
        "can you wake me at {time} {date}", "make an alarm at {time}",
    ),
    "alarm_remove": (
        "cancel my alarm for {time}", "delete the {time} alarm", "turn off all my alarms",
        "remove the alarm {date}", "i don't need the alarm at {time} anymore",
        "please clear my alarms",
    ),
    "weather_query": (
        "what's the weather like in {place}", "will it rain {date}",
        "how hot will it be in {place} {date}", "do i need an umbrella {date}",
        "what is the forecast for {place}", "is it going to snow {date}",
        "tell me the temperature in {place}",
    ),
    "play_music": (
        "play some {genre}", "put on {artist}", "i want to listen to {artist}",
        "play music by {artist}", "start my {genre} playlist", "can you play {genre} please",
        "play a song from {artist}",
    ),
    "lights_on": (
        "turn on the lights in the {room}", "switch the {room} lights on", "lights on please",
        "can you light up the {room}", "i need some light in the {room}",
        "turn the {room} lamp on",
    ),
    "lights_off": (
        "turn off the lights in the {room}", "switch off the {room} lights", "lights off",
        "make it dark in the {room}", "kill the lights in the {room}",
        "turn the {room} lamp off please",
    ),
    "volume_up": (
        "turn the volume up", "louder please", "increase the volume {amount}",
        "i can't hear it, turn it up", "make it louder {amount}", "raise the sound",
    ),
    "volume_down": (
        "turn the volume down", "quieter please", "lower the volume {amount}",
        "it's too loud, turn it down", "make it softer {amount}", "reduce the sound",
    ),
    "calendar_set": (
        "remind me about {event} {date}", "add {event} to my calendar {date} at {time}",
        "schedule {event} for {date}", "put {event} in my diary for {time}",
        "create an event called {event} {date}", "book {event} at {time} {date}",
    ),
    "calendar_query": (
        "what's on my calendar {date}", "do i have anything {date}",
        "when is {event}", "am i free {date} at {time}", "what meetings do i have {date}",
        "check my schedule for {date}",
    ),
    "datetime_query": (
        "what time is it", "what time is it in {place}", "what's the date {date}",
        "tell me the time in {place}", "what day is it today", "which day of the week is it",
    ),
    "news_query": (
        "what's the latest news about {topic}", "any news on {topic}",
        "give me the headlines", "tell me what's happening with {topic}",
        "read me the news about {topic}", "what are today's top stories",
    ),
    "transport_taxi": (
        "book a taxi to {place}", "get me a cab to {place} at {time}",
        "i need a ride to {place}", "order a taxi for {time}", "call me an uber to {place}",
        "can you find a taxi {date} at {time}",
    ),
    "cooking_recipe": (
        "how do i make {dish}", "give me a recipe for {dish}", "what do i need for {dish}",
        "how long do i bake {dish}", "find a recipe for {dish}", "teach me to cook {dish}",
    ),
    "lists_add": (
        "add {item} to my shopping list", "put {item} on the list", "i need to buy {item}",
        "remember to get {item}", "add {item} and {item} to the groceries",
        "we are out of {item}, add it to the list",
    ),
    "email_send": (
        "send an email to {contact}", "email {contact} that i'm running late",
        "write a message to {contact}", "reply to {contact}'s email",
        "tell {contact} by email that the meeting is {date}", "compose an email for {contact}",
    ),
    "general_joke": (
        "tell me a joke", "say something funny", "make me laugh", "do you know any jokes",
        "i want to hear a joke", "tell me a funny story",
    ),
}

INTENTS: tuple[str, ...] = tuple(INTENT_TEMPLATES)

# The Speech Commands v2 vocabulary (Warden, 2018): 35 words.
KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "backward", "bed", "bird", "cat", "dog", "follow", "forward", "happy", "house",
    "learn", "marvin", "sheila", "tree", "visual", "wow",
)
# fmt: on

_SLOT = re.compile(r"\{(\w+)\}")


def intent_utterance(intent: str, rng: np.random.Generator) -> str:
    """A random paraphrase of `intent` with random slot values filled in."""
    template = str(rng.choice(INTENT_TEMPLATES[intent]))
    return _SLOT.sub(lambda match: str(rng.choice(SLOTS[match.group(1)])), template)
