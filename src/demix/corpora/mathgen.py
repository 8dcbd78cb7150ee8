"""Seeded generator of school-maths problems with worked answers (the `math_problems` corpus).

Pure Python (``random`` + ``fractions``): about 50k problems per second, so the whole corpus is
generated in well under a second. Every answer is computed, not templated, so the text is
correct mathematics the model can learn from.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from fractions import Fraction

NAMES = ["Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mira", "Noah", "Omar", "Priya"]
ITEMS = [("apples", "basket"), ("pencils", "box"), ("books", "shelf"), ("eggs", "carton"), ("stamps", "album"), ("chairs", "row")]


def _poly(coeffs: list[int], var: str = "x") -> str:
    """Polynomial text from coefficients, highest degree first: [2, -3, 1] -> 2*x**2 - 3*x + 1."""
    terms: list[str] = []
    deg = len(coeffs) - 1
    for i, c in enumerate(coeffs):
        p = deg - i
        if c == 0:
            continue
        mag = abs(c)
        body = var if p == 1 else f"{var}**{p}" if p > 1 else ""
        text = (body if mag == 1 and body else f"{mag}*{body}" if body else str(mag))
        sign = "-" if c < 0 else "+"
        terms.append(("-" + text if sign == "-" else text) if not terms else f" {sign} {text}")
    return "".join(terms) or "0"


def _arithmetic(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(10, 9999), r.randint(10, 999)
    op = r.choice("+-*")
    val = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", str(val)


def _division(r: random.Random) -> tuple[str, str]:
    b = r.randint(2, 97)
    a = r.randint(b, 20000)
    q, rem = divmod(a, b)
    return (
        f"Divide {a} by {b}. Give the quotient and the remainder.",
        f"{a} = {b} * {q} + {rem}, so the quotient is {q} and the remainder is {rem}.",
    )


def _linear(r: random.Random) -> tuple[str, str]:
    x = r.randint(-30, 30)
    a = r.choice([i for i in range(-12, 13) if i not in (0,)])
    b = r.randint(-50, 50)
    c = a * x + b
    return (
        f"Solve {_poly([a, b])} = {c} for x.",
        f"Subtract {b} from both sides: {_poly([a, 0])} = {c - b}. Divide by {a}: x = {x}.",
    )


def _fractions(r: random.Random) -> tuple[str, str]:
    f1 = Fraction(r.randint(1, 20), r.randint(2, 24))
    f2 = Fraction(r.randint(1, 20), r.randint(2, 24))
    op = r.choice("+-*/")
    val = f1 + f2 if op == "+" else f1 - f2 if op == "-" else f1 * f2 if op == "*" else f1 / f2
    return f"Calculate {f1} {op} {f2} and simplify.", str(val)


def _simplify(r: random.Random) -> tuple[str, str]:
    g = r.randint(2, 15)
    n, d = r.randint(1, 30) * g, r.randint(2, 30) * g
    f = Fraction(n, d)
    return f"Simplify the fraction {n}/{d}.", f"The greatest common divisor of {n} and {d} is {math.gcd(n, d)}, so {n}/{d} = {f}."


def _gcd_lcm(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(2, 500), r.randint(2, 500)
    if r.random() < 0.5:
        return f"What is the greatest common divisor of {a} and {b}?", str(math.gcd(a, b))
    return f"What is the least common multiple of {a} and {b}?", str(a * b // math.gcd(a, b))


def _factorize(r: random.Random) -> tuple[str, str]:
    n = r.randint(12, 5000)
    m, factors, p = n, [], 2
    while p * p <= m:
        while m % p == 0:
            factors.append(p)
            m //= p
        p += 1
    if m > 1:
        factors.append(m)
    if len(factors) == 1:
        return f"Is {n} a prime number?", f"Yes, {n} is prime."
    return f"Write {n} as a product of prime factors.", f"{n} = " + " * ".join(map(str, factors))


def _evaluate(r: random.Random) -> tuple[str, str]:
    coeffs = [r.randint(-9, 9) for _ in range(r.randint(2, 4))]
    coeffs[0] = coeffs[0] or 1
    x = r.randint(-5, 5)
    val = sum(c * x ** (len(coeffs) - 1 - i) for i, c in enumerate(coeffs))
    return f"Let f(x) = {_poly(coeffs)}. What is f({x})?", f"f({x}) = {val}"


def _derivative(r: random.Random) -> tuple[str, str]:
    deg = r.randint(2, 5)
    coeffs = [r.randint(-9, 9) for _ in range(deg + 1)]
    coeffs[0] = coeffs[0] or 2
    d = [c * (deg - i) for i, c in enumerate(coeffs[:-1])]
    return f"Differentiate {_poly(coeffs)} with respect to x.", _poly(d)


def _expand(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(-12, 12), r.randint(-12, 12)
    expanded = _poly([1, a + b, a * b])
    fa = f"(x {'+' if a >= 0 else '-'} {abs(a)})"
    fb = f"(x {'+' if b >= 0 else '-'} {abs(b)})"
    if r.random() < 0.5:
        return f"Expand {fa}*{fb}.", expanded
    return f"Factor {expanded}.", f"{fa}*{fb}. Check: the roots are x = {-a} and x = {-b}."


def _percent(r: random.Random) -> tuple[str, str]:
    p, n = r.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75]), r.randint(1, 200) * 4
    return f"What is {p}% of {n}?", f"{p}/100 * {n} = {Fraction(p * n, 100)}"


def _sequence(r: random.Random) -> tuple[str, str]:
    a, d, k = r.randint(-20, 20), r.randint(-9, 9) or 3, r.randint(4, 6)
    terms = [a + i * d for i in range(k)]
    n = r.randint(10, 40)
    return (
        f"The sequence {', '.join(map(str, terms))}, ... is arithmetic. What is its {n}th term, and the sum of its first {n} terms?",
        f"The difference is {d}, so term {n} is {a} + {n - 1}*{d} = {a + (n - 1) * d}; "
        f"the sum is {n}*({a} + {a + (n - 1) * d})/2 = {n * (2 * a + (n - 1) * d) // 2}.",
    )


def _word(r: random.Random) -> tuple[str, str]:
    name = r.choice(NAMES)
    item, holder = r.choice(ITEMS)
    per, count, extra = r.randint(3, 24), r.randint(2, 15), r.randint(1, 40)
    total = per * count + extra
    return (
        f"{name} has {count} {holder}s with {per} {item} in each, and {extra} loose {item}. How many {item} does {name} have?",
        f"{count} * {per} + {extra} = {total} {item}.",
    )


def _rate(r: random.Random) -> tuple[str, str]:
    speed, hours = r.randint(3, 120), r.randint(2, 12)
    minutes = r.choice([0, 15, 30, 45])
    dist = Fraction(speed * (hours * 60 + minutes), 60)
    return (
        f"A car travels at {speed} km per hour for {hours} hours and {minutes} minutes. How far does it go?",
        f"{hours} h {minutes} min is {Fraction(hours * 60 + minutes, 60)} hours, "
        f"so it travels {speed} * {Fraction(hours * 60 + minutes, 60)} = {dist} km.",
    )


PROBLEMS: list[Callable[[random.Random], tuple[str, str]]] = [
    _arithmetic, _division, _linear, _fractions, _simplify, _gcd_lcm, _factorize,
    _evaluate, _derivative, _expand, _percent, _sequence, _word, _rate,
]


def worksheets(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of worksheets (documents) of 4-10 problems each."""
    r = random.Random(seed)
    while True:
        lines = []
        for i in range(r.randint(4, 10)):
            question, answer = r.choice(PROBLEMS)(r)
            lines.append(f"Problem {i + 1}. {question}\nAnswer: {answer}")
        yield "\n\n".join(lines)
