#!/usr/bin/env python3
"""Generate the synthetic support-ticket triage demo dataset for tunesmith.

Deterministic (random.Random(7)), stdlib only. Writes support_tickets.jsonl
next to this script: 400 chat records whose assistant turn is one line of
compact JSON with keys in the fixed order
category, priority, product, order_id, action.

Labelling rules (every label follows from the message text alone):

* product   -- exactly one Larkspur product is named in each message
               (occasionally written in lower case); the answer uses the
               canonical name. Each product has its own order-id prefix.
* order_id  -- the order id written in the message (PREFIX-12345), else null.
* category / action -- decided by what the customer asks for:
    billing       double charge / overcharge / refund wish -> refund_review
                  invoice copy                              -> resend_invoice
    shipping      package not arrived                       -> track_package
                  package damaged or wrong item             -> replace_item
    technical     outage, data loss, bug                    -> escalate_engineering
                  how-to question                           -> send_instructions
    account       forgotten password / locked out           -> reset_password
                  change email, name or admin               -> update_account
    cancellation  cancel / close the account                -> close_account
    feedback      compliment or suggestion                  -> log_feedback
* priority  -- urgent: outage / staff cannot work / data loss;
               high:   charged twice or overcharged, or an explicit deadline
                       ("deadline", "by <date>");
               low:    compliments and suggestions (feedback);
               normal: everything else (questions, routine requests, minor bugs).
  Tone (angry, polite, terse) never changes the priority.

Run:  python examples/data/make_support_tickets.py
"""

import json
import os
import re

import random

SEED = 7
N_RECORDS = 400
MAX_USER_CHARS = 300
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support_tickets.jsonl")

SYSTEM_PROMPT = (
    "You triage customer support tickets for Larkspur Software. Reply with exactly "
    "one line of JSON and nothing else, keys in this order: category, priority, "
    "product, order_id, action. Categories: billing, shipping, technical, account, "
    "cancellation, feedback. Priorities: low, normal, high, urgent. Use null for "
    "order_id if the ticket has none."
)

PRODUCTS = {
    "Nimbus Backup": "NB",
    "Quill Notes": "QN",
    "Harbor CRM": "HC",
    "Vireo Analytics": "VA",
    "Ember Mail": "EM",
    "Tern Scheduler": "TS",
}

ITEMS = ["install kit", "hardware key", "boxed edition", "license card", "starter pack"]

FIRST_NAMES = [
    "Maria", "James", "Priya", "Tom", "Aisha", "Lukas", "Sofia", "Kenji", "Olga", "Diego",
    "Hannah", "Omar", "Chloe", "Ravi", "Ingrid", "Mateo", "Grace", "Yusuf", "Elena", "Noah",
    "Fatima", "Liam", "Mei", "Pablo", "Zoe", "Anders", "Nadia", "Felix", "Amara", "Hugo",
]
LAST_NAMES = [
    "Garcia", "Smith", "Patel", "Nguyen", "Khan", "Weber", "Rossi", "Tanaka", "Ivanova",
    "Lopez", "Brown", "Haddad", "Martin", "Iyer", "Larsen", "Silva", "Okafor", "Novak",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
CURRENCIES = ["$", "\u20ac", "\u00a3"]

# Irrelevant details for long-winded tickets. They carry no label cues.
FILLERS = [
    "I've been a Larkspur customer since {year} and rarely need to write in.",
    "Our office just moved to a new building, so things are a bit hectic.",
    "My manager {name2} asked me to contact you about this.",
    "Sorry for the long message, I'm typing this between meetings.",
    "We are a small bakery with {staff} employees.",
    "I'm writing from my phone, so please excuse the formatting.",
    "I tried the chat widget earlier but it closed on me.",
    "Hope your week is going well.",
    "A colleague of mine, {name2}, suggested I email you directly.",
    "We run a dental clinic with {staff} people.",
]

DEADLINES = [
    "I need this by {date} at the latest.",
    "Our deadline is {date}.",
    "There is a hard deadline of {date} on this.",
    "It has to be sorted by {date} for our audit.",
    "Please handle it by {date}, we have a deadline.",
]

GREETINGS = ["Hi,", "Hello,", "Hi team,", "Dear Larkspur support,", "Good morning,", "Hey,"]
SIGNOFFS = ["Thanks, {name}", "Regards, {name}", "- {name}", "Cheers, {name}",
            "Best, {name}", "Thank you! {name}"]

# Order reference renderings. {oid} is the order id.
REF_INLINE = [" (order {oid})", " on order {oid}", " for order #{oid}", " (ref {oid})",
              ", order {oid},"]
REF_SENT = [" My order number is {oid}.", " Order: {oid}.", " Ref: {oid}.",
            " The order ID is {oid}.", " Order #{oid} if that helps."]
REF_PREFIX = ["[{oid}] ", "Re order {oid}: ", "{oid} - "]

# Occasional typos, only on words that never carry label cues.
TYPOS = {
    "receive": "recieve", "the ": "teh ", "please": "pls", "because": "becuase",
    "really": "realy", "thanks": "thx", "would": "woud", "again": "agian",
    "definitely": "definately", "which": "wich", "until": "untill",
}

# (category, sub-type, action, base priority, template)
# Templates use {product}, {item}, {amount}, {amount2}, {date}, {name2}, {email},
# {filler} and exactly one of {ri} (inline order ref) / {rs} (sentence order ref).
T = []


def add(category, action, priority, deadline_ok, *templates):
    for t in templates:
        T.append((category, action, priority, deadline_ok, t))


# ---------------------------------------------------------------- billing
add("billing", "refund_review", "high", False,
    "I was charged twice for {product}{ri} this month. Please refund the duplicate {amount} payment.",
    "Double charge on my card for {product}!{rs} Two payments of {amount} went out on {date}. Fix this.",
    "charged twice for {product}{ri}, refund one of them",
    "I noticed my {product} subscription was billed twice on {date}, {amount} each time.{rs} Could you reverse the extra charge?",
    "{filler} Anyway, my bank statement shows {product} took {amount} from me twice.{rs} I'd like the second charge refunded.",
    "My {product} invoice{ri} says {amount} but my plan costs {amount2}. I was overcharged and would like the difference back.",
    "You overcharged me for {product}. Expected {amount2}, got billed {amount}.{rs} Unbelievable.",
)
add("billing", "refund_review", "normal", True,
    "I bought {product}{ri} by mistake yesterday and haven't used it. Can I get a refund?",
    "Could I request a refund for {product}? It turned out not to suit our team.{rs}",
    "{filler} We paid {amount} for {product}{ri} but never set it up. Is a refund possible?",
)
add("billing", "resend_invoice", "normal", True,
    "Could you resend the invoice for my {product} purchase{ri}? I can't find it in my inbox.",
    "need a copy of the {product} invoice{ri} for our accounts team",
    "Our finance department asks for a PDF invoice for {product} from {date}.{rs} Would you mind emailing it again?",
    "{filler} Our accountant says the {product} invoice never reached us.{rs} Please send it again.",
    "Where is my invoice?? Paid {amount} for {product}{ri} and got nothing in writing.",
    "Kindly email me a copy of the {product} invoice from {date}, with our company address on it.{rs}",
    "invoice for {product}{ri} pls, lost the original",
)

# --------------------------------------------------------------- shipping
add("shipping", "track_package", "normal", True,
    "Where is my {product} {item}{ri}? It was supposed to arrive on {date}.",
    "still no package. ordered the {product} {item}{ri} weeks ago. what is going on??",
    "I ordered the {product} {item} and the tracking hasn't updated since {date}.{rs} Could you check where it is?",
    "{filler} The {product} {item} I ordered still hasn't shown up.{rs} Can you track it down?",
    "Ridiculous. Ten days and my {product} {item}{ri} is nowhere to be seen.",
)
add("shipping", "replace_item", "normal", True,
    "The {product} {item}{ri} arrived damaged, the box was crushed. Please send a replacement.",
    "You sent me the wrong item. I ordered the {product} {item}{ri} and got something else entirely.",
    "My {product} {item} came today but it is cracked.{rs} Could I get a new one?",
    "{filler} The parcel with my {product} {item} arrived soaked and broken.{rs} I'd like a replacement shipped.",
    "wrong {item} in the box for {product}{ri}. send the right one",
)

# -------------------------------------------------------------- technical
add("technical", "escalate_engineering", "urgent", False,
    "{product} is down for our whole team and we cannot work. Please fix ASAP!",
    "URGENT: {product} has been throwing errors since this morning and nobody in the office can work.{rs}",
    "It seems {product} is completely unavailable; every page times out. Our staff cannot work until it is back.{rs}",
    "total outage on {product}. nothing loads. fix it now",
    "After the latest {product} update, all our files from {date} are gone. We have lost data and need help immediately.",
    "{product} deleted my entire project when it synced{ri}. Weeks of data, lost. This is unacceptable!",
    "{filler} This morning half of our records in {product} had vanished.{rs} Please help us recover the lost data.",
)
add("technical", "escalate_engineering", "normal", True,
    "Found a bug in {product}{ri}: the export button shows an error when a file name has spaces. Everything else is fine.",
    "{product} crashes whenever I open the settings page. I can get around it, but could someone look into it?{rs}",
    "{filler} Small glitch: {product} shows dates in the wrong format on the summary screen.{rs}",
)
add("technical", "send_instructions", "normal", True,
    "How do I export my data from {product} to CSV?",
    "quick question about {product}{ri}: can it sync with a shared calendar? how do i turn that on",
    "Is there a way to schedule automatic backups of my settings in {product}? Could you point me to the steps?{rs}",
    "hi, how do I add a second user to {product}{ri}? can't find the option",
    "I'm new to {product} and wondering how to import contacts from a spreadsheet.{rs} Is there a guide?",
    "{filler} What is the right way to set up automatic reports in {product}{ri}?",
)

# ---------------------------------------------------------------- account
add("account", "reset_password", "normal", True,
    "I forgot my {product} password and the reset email never arrives. Can you help me get back in?",
    "locked out of {product} after too many login attempts{ri}. need a password reset",
    "My {product} account says my password has expired and won't accept a new one.{rs} Could you reset it for me?",
    "{filler} I can't remember my {product} password and the recovery questions are not accepted.{rs}",
    "Why am I locked out of {product} AGAIN? Reset my password please.{rs}",
)
add("account", "update_account", "normal", True,
    "Please change the email address on my {product} account to {email}.{rs}",
    "I got married, so the name on my {product} account{ri} needs to be updated to {name2}.",
    "switch the admin user on our {product} account to {name2}{ri}",
    "{filler} Could you update the login email for our {product} account to {email}?",
)

# ----------------------------------------------------------- cancellation
add("cancellation", "close_account", "normal", True,
    "Please cancel my {product} subscription{ri}. We no longer need it.",
    "cancel {product}{ri}. i'm done.",
    "We've decided to move on from {product}. Kindly close our account at the end of the current term.{rs}",
    "{filler} I'd like to stop my {product} plan and close the account, please.{rs}",
    "I want out. Cancel my {product} account{ri} and stop emailing me.",
    "How do I cancel {product}? We switched providers and don't need the account anymore.{rs}",
)

# --------------------------------------------------------------- feedback
add("feedback", "log_feedback", "low", False,
    "Just wanted to say {product} has made our team so much more productive. Great job!",
    "Love the new dashboard in {product}!",
    "Suggestion: it would be nice if {product} had a dark mode.{rs}",
    "A small idea for {product}: letting us pin favourite reports to the top would save a lot of clicks.",
    "{filler} I've been very happy with {product}, and your support agent {name2} was lovely.",
    "feature request for {product}: keyboard shortcuts for everything",
    "{product} is honestly the best tool we pay for. Keep it up.{rs}",
    "It would help if {product} could show a weekly summary email. Just a thought.",
)

CATEGORIES = ["billing", "shipping", "technical", "account", "cancellation", "feedback"]
BY_CATEGORY = {c: [t for t in T if t[0] == c] for c in CATEGORIES}


def rand_date(rng):
    if rng.random() < 0.4:
        return rng.choice(WEEKDAYS)
    return "{} {}".format(rng.choice(MONTHS), rng.randint(1, 28))


def rand_amount(rng):
    cur = rng.choice(CURRENCIES)
    if rng.random() < 0.5:
        return "{}{}".format(cur, rng.choice([9, 12, 19, 29, 49, 79, 99, 149, 199, 299]))
    return "{}{}.{:02d}".format(cur, rng.randint(5, 400), rng.choice([0, 50, 99, 95]))


def count_sentences(text):
    return len([s for s in re.split(r"[.!?]+(?:\s+|$)", text) if s.strip()])


def make_record(rng, category):
    category, action, priority, deadline_ok, tpl = rng.choice(BY_CATEGORY[category])
    product = rng.choice(list(PRODUCTS))
    has_oid = rng.random() < 0.6
    oid = "{}-{}".format(PRODUCTS[product], rng.randint(10000, 99999)) if has_oid else None

    name = rng.choice(FIRST_NAMES)
    name2 = "{} {}".format(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
    # amount2 is the expected plan price: same currency, strictly lower than amount
    amount = rand_amount(rng)
    cur, value = amount[0], float(amount[1:])
    amount2 = "{}{}".format(cur, rng.choice([p for p in (5, 9, 12, 19, 29, 49, 79, 99)
                                             if p < value] or [4]))
    first, last = name2.lower().split()
    fields = {
        "product": product if rng.random() > 0.08 else product.lower(),
        "item": rng.choice(ITEMS),
        "amount": amount,
        "amount2": amount2,
        "date": rand_date(rng),
        "name2": name2,
        "email": "{}.{}@{}".format(first, last, rng.choice(["example.com", "mail.example.org", "example.net"])),
        "filler": rng.choice(FILLERS).format(year=rng.randint(2012, 2023), name2=name2,
                                             staff=rng.randint(3, 40)),
        "ri": "",
        "rs": "",
    }

    prefix = ""
    if oid is not None:
        if "{ri}" in tpl:
            fields["ri"] = rng.choice(REF_INLINE).format(oid=oid)
        elif "{rs}" in tpl and rng.random() < 0.75:
            fields["rs"] = rng.choice(REF_SENT).format(oid=oid)
        else:
            prefix = rng.choice(REF_PREFIX).format(oid=oid)

    body = tpl.format(**fields)
    body = body[0].upper() + body[1:] if body[0].isalpha() and not tpl[0].islower() else body
    body = re.sub(r",([.,?!:])", r"\1", body)
    body = re.sub(r",$", "", body)

    if deadline_ok and rng.random() < 0.3:
        dl = rng.choice(DEADLINES).format(date=rand_date(rng))
        body = body.rstrip() + ("" if body.rstrip()[-1] in ".!?" else ".") + " " + dl
        priority = "high"

    if rng.random() < 0.12:  # occasional typos on cue-free words
        for src in rng.sample(sorted(TYPOS), 3):
            if src in body:
                body = body.replace(src, TYPOS[src], 1)

    text = prefix + body
    if count_sentences(text) > 4:
        return None, None
    if rng.random() < 0.35:
        text = rng.choice(GREETINGS) + "\n" + text
    if rng.random() < 0.35:
        text = text + "\n" + rng.choice(SIGNOFFS).format(name=name)

    answer = {
        "category": category,
        "priority": priority,
        "product": product,
        "order_id": oid,
        "action": action,
    }
    return text, answer


def main():
    rng = random.Random(SEED)
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(N_RECORDS)]
    rng.shuffle(cats)
    seen = set()
    records = []
    for cat in cats:
        while True:
            text, answer = make_record(rng, cat)
            if text is None or text in seen or len(text) > MAX_USER_CHARS:
                continue
            seen.add(text)
            break
        records.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant",
             "content": json.dumps(answer, ensure_ascii=False, separators=(", ", ": "))},
        ]})
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("wrote {} records to {}".format(len(records), OUT_PATH))


if __name__ == "__main__":
    main()
