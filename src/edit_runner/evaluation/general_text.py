"""A small project-written general-text set for the perplexity collapse check without ME-PPL-50.

Twenty short paragraphs on varied everyday topics, written for this project (no third-party
text). Used by :func:`edit_runner.evaluation.perplexity.resolve_me_ppl` when no ME-PPL file is
given; results label it ``general_text_fallback`` so it is never mistaken for ME-PPL-50.
"""

from __future__ import annotations

GENERAL_TEXTS: tuple[str, ...] = (
    ("The river runs slowly through the valley in late summer, and the fishermen wait on the bank "
    "from early morning until the sun is high."),
    ("Bread is made from flour, water, salt and yeast. The dough is left to rise for a few hours "
    "before it is shaped and baked in a hot oven."),
    ("The city council met on Tuesday to discuss the new bus routes. Several residents asked for "
    "more buses in the evening, when many people travel home from work."),
    ("Most plants need sunlight, water and nutrients from the soil to grow. In winter, many trees "
    "lose their leaves and rest until the weather becomes warmer again."),
    ("She opened the old wooden box and found a stack of letters tied with a blue ribbon. The paper "
    "was yellow, but the handwriting was still easy to read."),
    ("The football match ended in a draw after both teams scored in the second half. The coach said "
    "he was pleased with the effort of the young players."),
    ("A computer program is a list of instructions that tells the machine what to do. Programmers "
    "write these instructions in languages that people can read and edit."),
    ("The museum has a large collection of paintings from the nineteenth century, as well as a small "
    "room with maps and tools used by early sailors."),
    ("Heavy rain is expected across the region this weekend, with strong winds near the coast. "
    "Drivers are advised to take care on wet roads."),
    ("The children built a small house out of cardboard boxes in the garden. They painted a door and "
    "two windows on it and spent the whole afternoon playing inside."),
    ("Regular exercise helps keep the heart healthy and can improve sleep. Even a short walk every "
    "day makes a difference for many people."),
    ("The company reported higher sales in the last quarter, mainly because of strong demand for its "
    "new kitchen products in shops abroad."),
    ("On the first day of school, the teacher asked each student to say their name and one thing "
    "they liked to do during the holidays."),
    ("The mountain village can only be reached by a narrow road that climbs through the forest. In "
    "winter, the road is often closed because of snow."),
    ("Coffee beans are the seeds of a fruit that grows on small trees. After they are picked, the "
    "beans are dried, roasted and ground before brewing."),
    ("The orchestra played a short piece by a local composer before the interval, and the audience "
    "applauded for several minutes at the end of the concert."),
    ("Many birds fly south in autumn to find food and a warmer climate. Some of them travel thousands "
    "of kilometres and return to the same place every spring."),
    ("He fixed the bicycle chain with a simple tool and a little oil, then rode to the market to buy "
    "vegetables and fresh eggs for dinner."),
    ("The library is open every day except Sunday. Visitors can borrow up to ten books at a time and "
    "use the computers on the second floor."),
    ("The old bridge was repaired last year with new steel beams. It now carries cars and trucks "
    "again, and a wide path was added for people on foot."),
)
