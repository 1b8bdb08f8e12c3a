"""The tour's words, in English and Korean (written for qkv; the texts it follows are in ../shared/seeds).

Captions are ``(English, Korean)`` pairs. Each paragraph may quote the step's numbers by name: ``{learned_row}``
is filled in from ``Step.numbers`` when the page is made."""

from __future__ import annotations

LANGUAGES = ("en", "ko")

PAGE = {
    "en": {
        "title": "qkv tour: the texts' examples, computed",
        "intro": "Every number and picture on this page was computed by qkv when the page was made ({made}). "
        "Each step's claim is also a test in qkv's suite.",
        "figure": "Figure",
        "unavailable": "Not shown",
    },
    "ko": {
        "title": "qkv 투어: 글 속의 예제를 직접 계산하기",
        "intro": "이 페이지의 모든 숫자와 그림은 페이지를 만들 때({made}) qkv가 직접 계산한 것입니다. "
        "각 단계의 주장은 qkv 테스트에서도 검사됩니다.",
        "figure": "그림",
        "unavailable": "표시하지 않음",
    },
}

STEPS = {
    "i_go_home": {
        "en": {
            "title": "1. Self-attention on “I go home”",
            "body": [
                "Take three word vectors of equal length and let each word be its own query, key and value "
                "(Q = K = V = X). The dot product of a vector with itself is the largest it can have with any "
                "vector of the same length, so every word gives most of its weight to itself: the diagonal is "
                "{plain_diag}.",
                "Learned projections change that. After a few hundred steps of fitting W_Q and W_K to a toy "
                "objective, the row of “I” becomes {learned_row} (the target was {target}): “I” now draws most "
                "of its new meaning from “home”. Its new vector is the weighted average of the values, "
                "{new_i}.",
            ],
        },
        "ko": {
            "title": "1. “I go home”의 셀프 어텐션",
            "body": [
                "길이가 같은 단어 벡터 세 개를 두고, 각 단어가 자기 자신의 쿼리·키·값이 되게 합니다(Q = K = V = X). "
                "같은 길이의 벡터끼리는 자기 자신과의 내적이 가장 크므로, 모든 단어가 가장 큰 가중치를 자기 "
                "자신에게 줍니다. 대각선 값: {plain_diag}.",
                "학습된 투영은 이것을 바꿉니다. 장난감 목표로 W_Q와 W_K를 수백 스텝 맞추면 “I”의 행은 "
                "{learned_row}가 됩니다(목표: {target}). 이제 “I”는 새 의미의 대부분을 “home”에서 가져옵니다. "
                "새 벡터는 값 벡터들의 가중 평균 {new_i}입니다.",
            ],
        },
        "captions": {
            "plain": ("Q = K = V = X", "Q = K = V = X"),
            "learned": ("learned W_Q, W_K", "학습된 W_Q, W_K"),
            "neuron": (
                "the learned head, step by step, from its hook points: the query of “I”, the key of “home”, their "
                "element-wise product, its sum, ÷ √d, the softmax over the keys and the weighted sum of the values "
                "(click a word on either side to pick another query or key)",
                "학습된 헤드를 훅 포인트에서 읽은 값으로 한 단계씩: “I”의 쿼리, “home”의 키, 둘의 원소별 곱, 그 합, "
                "÷ √d, 키 전체에 대한 소프트맥스, 값들의 가중합 (양쪽의 단어를 누르면 다른 쿼리나 키를 고릅니다)",
            ),
        },
    },
    "single_head": {
        "en": {
            "title": "2. One head that lets nouns find their adjectives",
            "body": [
                "3Blue1Brown's example: in “a fluffy blue creature roamed the verdant forest” each noun asks "
                "“is there an adjective just before me?” (its query) and each adjective answers (its key). Here "
                "the embeddings, W_Q and W_K are built by hand to do exactly that. The grid of dot products K·Q "
                "runs from {the_creature_dot} (“the” against “creature”) to {fluffy_creature_dot} (“fluffy” "
                "against “creature”).",
                "Softmax down each column turns the grid into the attention pattern: “creature” puts "
                "{creature_on_adjectives} of its weight on “fluffy” and “blue”, “forest” puts "
                "{forest_on_verdant} on “verdant”.",
                "A trained model has heads like it. Trying all 72 heads of MiniLM on the same sentence, head "
                "{minilm_head} of layer {minilm_layer} sends the nouns' weight to their adjectives most: "
                "{minilm_score} on average (the median head: {minilm_median}). Here the adjectives sit right before "
                "their nouns, so a head that simply looks at the previous word does the same: one sentence cannot "
                "tell the two apart.",
            ],
        },
        "ko": {
            "title": "2. 명사가 형용사를 찾는 헤드 하나",
            "body": [
                "3Blue1Brown의 예: “a fluffy blue creature roamed the verdant forest”에서 명사는 “내 앞에 "
                "형용사가 있니?”라고 묻고(쿼리) 형용사는 “있어!”라고 답합니다(키). 여기서는 임베딩과 W_Q, W_K를 "
                "손으로 만들어 정확히 그렇게 동작하게 했습니다. 내적 K·Q 격자는 {the_creature_dot}(“the”와 "
                "“creature”)부터 {fluffy_creature_dot}(“fluffy”와 “creature”)까지입니다.",
                "열마다 softmax를 적용하면 어텐션 패턴이 됩니다. “creature”는 가중치의 {creature_on_adjectives}를 "
                "“fluffy”와 “blue”에, “forest”는 {forest_on_verdant}를 “verdant”에 둡니다.",
                "학습된 모델에도 이런 헤드가 있습니다. 같은 문장에서 MiniLM의 헤드 72개를 모두 시험해 보면, 층 "
                "{minilm_layer}의 헤드 {minilm_head}가 명사의 가중치를 형용사에 가장 많이 보냅니다: 평균 "
                "{minilm_score}(중앙값 헤드: {minilm_median}). 이 문장에서는 형용사가 명사 바로 앞에 있으므로, "
                "단순히 앞 단어를 보는 헤드도 똑같이 합니다. 문장 하나로는 둘을 구별할 수 없습니다.",
            ],
        },
        "captions": {
            "dots": ("the grid of dot products", "내적 격자"),
            "pattern": ("the attention pattern", "어텐션 패턴"),
            "minilm": ("the same sentence in MiniLM: the head found", "같은 문장, MiniLM에서 찾은 헤드"),
        },
    },
    "scaling": {
        "en": {
            "title": "3. Why divide by √d_k",
            "body": [
                "For random queries and keys with unit-variance entries, q·k has a standard deviation of √d_k: "
                "measured {spread} for d_k = {dims}. Dividing by √d_k brings it back to {spread_scaled}.",
                "Without the scale, softmax over {keys} keys saturates as d_k grows (its largest weight averages "
                "{peak}): gradients through it vanish. With the scale the largest weight stays at {peak_scaled}.",
            ],
        },
        "ko": {
            "title": "3. 왜 √d_k로 나누는가",
            "body": [
                "성분의 분산이 1인 무작위 쿼리와 키에서 q·k의 표준편차는 √d_k입니다. d_k = {dims}일 때 측정값 "
                "{spread}. √d_k로 나누면 {spread_scaled}로 돌아옵니다.",
                "나누지 않으면 키 {keys}개에 대한 softmax가 d_k가 커질수록 포화되어(가장 큰 가중치의 평균 {peak}) "
                "기울기가 사라집니다. 나누면 가장 큰 가중치가 {peak_scaled}에 머뭅니다.",
            ],
        },
        "captions": {"saturation": ("softmax saturation", "softmax 포화")},
    },
    "multi_head": {
        "en": {
            "title": "4. Many heads, many patterns",
            "body": [
                "MiniLM has {heads} heads of {head_dim} dimensions in every layer; their outputs are concatenated "
                "and mixed by the output projection W_O ({out_proj}). On “" + "{sentence}" + "” the {heads} heads of "
                "layer {layer} send most of the weight of “it” to {distinct_targets} different places (each with "
                "the number of heads that choose it): {it_places}.",
            ],
        },
        "ko": {
            "title": "4. 여러 헤드, 여러 패턴",
            "body": [
                "MiniLM은 층마다 {head_dim}차원 헤드 {heads}개를 가지며, 출력은 이어 붙인 뒤 출력 투영 W_O "
                "({out_proj})로 섞입니다. “{sentence}”에서 층 {layer}의 헤드 {heads}개는 “it”의 가중치를 가장 많이 "
                "서로 다른 {distinct_targets}곳으로 보냅니다(각 곳을 고른 헤드 수와 함께): {it_places}.",
            ],
        },
        "captions": {"heads": ("one layer, every head", "한 층의 모든 헤드")},
        "unavailable": {
            "en": "The texts' Korean sentences are not drawn here: MiniLM's English vocabulary breaks “{korean0}” "
            "({korean0_words} words) into {korean0_pieces} letter pieces ({korean0_unknown} unknown), so its "
            "attention would not be between words. Step 7 shows Korean processed by a model trained on it.",
            "ko": "글 속의 한국어 문장은 여기서 그리지 않습니다. MiniLM의 영어 어휘는 “{korean0}”({korean0_words}"
            "어절)을 자모 조각 {korean0_pieces}개(모르는 토큰 {korean0_unknown}개)로 쪼개므로, 그 어텐션은 단어 "
            "사이의 것이 아닙니다. 한국어로 학습한 모델은 7단계에서 볼 수 있습니다.",
        },
    },
    "masking": {
        "en": {
            "title": "5. Masking and next-token prediction",
            "body": [
                "A causal mask lets each position see only itself and the past, so one pass trains every position "
                "at once. In the character GPT of {source} the weights of every row sum to one (largest deviation "
                "{row_sum_error}) and the largest weight on a future position is {future_max}.",
                "After “{prompt_end}” the model's five most likely next characters are {top5}. Temperature "
                "reshapes that distribution: its entropy is {entropy} nats at T = {temperatures}.",
            ],
        },
        "ko": {
            "title": "5. 마스킹과 다음 토큰 예측",
            "body": [
                "인과 마스크는 각 위치가 자기 자신과 과거만 보게 하므로, 한 번의 계산으로 모든 위치를 동시에 "
                "학습합니다. {source}의 문자 단위 GPT에서 모든 행의 가중치 합은 1이고(최대 오차 {row_sum_error}) "
                "미래 위치의 가중치는 최대 {future_max}입니다.",
                "“{prompt_end}” 다음 글자로 모델이 꼽은 상위 5개는 {top5}입니다. 온도는 이 분포를 바꿉니다. "
                "T = {temperatures}에서 엔트로피는 {entropy} nat입니다.",
            ],
        },
        "captions": {"mask": ("causal attention", "인과 어텐션"), "temperature": ("temperature", "온도")},
        "unavailable": {
            "en": "This step reads a trained character-level GPT, which is not here yet. Make one (about 3 minutes) "
            "and make the page again: {commands}",
            "ko": "이 단계는 학습된 문자 단위 GPT를 읽는데, 아직 없습니다. 다음 명령으로 만든 뒤(약 3분) 페이지를 "
            "다시 만드세요: {commands}",
        },
    },
    "context": {
        "en": {
            "title": "6. Context changes meaning",
            "body": [
                "A word's input embedding is a row of a table: “bank” enters MiniLM as the same vector in "
                "{sentences}. After the attention layers its final vectors differ: the two money senses have "
                "cosine {money_money}, money against river at most {money_river}.",
                "Directions in the embedding table carry meaning too: daughter − son and woman − man have cosine "
                "{analogy}, against {control} for daughter − son and table − chair.",
            ],
        },
        "ko": {
            "title": "6. 문맥이 의미를 바꾼다",
            "body": [
                "단어의 입력 임베딩은 표의 한 행입니다. “bank”는 {sentences}에서 모두 같은 벡터로 MiniLM에 "
                "들어갑니다. 어텐션 층을 지난 최종 벡터는 달라집니다. 두 ‘은행’ 의미의 코사인은 {money_money}, "
                "‘은행’과 ‘강둑’은 최대 {money_river}입니다.",
                "임베딩 표의 방향에도 의미가 있습니다. daughter − son과 woman − man의 코사인은 {analogy}, "
                "daughter − son과 table − chair는 {control}입니다.",
            ],
        },
        "captions": {"bank": ("“bank” in three sentences", "세 문장 속의 “bank”")},
    },
    "score_functions": {
        "en": {
            "title": "8. Score functions",
            "body": [
                "Luong's score functions compare a decoder state h_t with each encoder state h̄_s: dot (h_tᵀh̄_s), "
                "general (h_tᵀW h̄_s), concat (vᵀtanh(W[h_t; h̄_s])) and location (W h_t alone). On one example "
                "they weigh the five source states differently: {weights}.",
                "Global attention weighs every source position; local-m only a window of 2D + 1 positions "
                "around the current step (D = {window}, step {step}); local-p around a position p_t the model "
                "predicts, multiplied by a Gaussian around p_t, so its weights sum to {local_p_sum}, less than one.",
            ],
        },
        "ko": {
            "title": "8. 점수 함수",
            "body": [
                "Luong의 점수 함수는 디코더 상태 h_t와 인코더 상태 h̄_s를 비교합니다: dot(h_tᵀh̄_s), "
                "general(h_tᵀW h̄_s), concat(vᵀtanh(W[h_t; h̄_s])), location(W h_t만). 한 예제에서 다섯 소스 "
                "상태의 가중치는 각각 다릅니다: {weights}.",
                "전역 어텐션은 모든 소스 위치에 가중치를 줍니다. local-m은 현재 스텝 주변 2D + 1개 위치의 창만(D = "
                "{window}, 스텝 {step}), local-p는 모델이 예측한 위치 p_t 주변만 보고 p_t 중심의 가우시안을 곱하므로 "
                "가중치 합이 {local_p_sum}로 1보다 작습니다.",
            ],
        },
        "captions": {
            "scores": ("one example, four scores", "한 예제, 네 가지 점수"),
            "local": ("global, local-m and local-p", "전역, local-m, local-p"),
        },
    },
    "masks": {
        "en": {
            "title": "10. Autoregressive models beyond text",
            "body": [
                "MADE masks the weights of a network so that output d sees only inputs before d: for three "
                "inputs, output 1 sees nothing, output 2 sees x1, output 3 sees x1 and x2 (the table and the first "
                "figure, read off qkv's MADE). PixelCNN masks its convolution kernel instead: type A hides the "
                "centre pixel and everything after it, type B keeps the centre (the second figure: row {centre} of "
                "the {kernel} kernel is {row_a} in type A and {row_b} in type B).",
            ],
        },
        "ko": {
            "title": "10. 텍스트 너머의 자기회귀 모델",
            "body": [
                "MADE는 신경망의 가중치를 가려 출력 d가 d 이전의 입력만 보게 합니다. 입력이 셋이면 출력 1은 아무것도, "
                "출력 2는 x1을, 출력 3은 x1과 x2를 봅니다(표와 첫째 그림: qkv의 MADE에서 읽은 것). PixelCNN은 대신 "
                "합성곱 커널을 가립니다. A형은 가운데 픽셀과 그 뒤를 모두 가리고, B형은 가운데를 남깁니다(둘째 그림: "
                "{kernel} 커널의 {centre}행이 A형에서는 {row_a}, B형에서는 {row_b}).",
            ],
        },
        "captions": {"made": ("MADE", "MADE"), "pixelcnn": ("PixelCNN masks", "PixelCNN 마스크")},
    },
}

RUNS_MISSING = {
    "en": "This step reads the trained dates translators, which are not here yet. Train them (a few minutes each) "
    "and make the page again: {commands}",
    "ko": "이 단계는 학습된 날짜 번역 모델을 읽는데, 아직 없습니다. 다음 명령으로 학습한 뒤(각 몇 분) 페이지를 다시 "
    "만드세요: {commands}",
}

STEPS["bottleneck"] = {
    "en": {
        "title": "7. The bottleneck, and attention as alignment",
        "body": [
            "An encoder-decoder without attention must squeeze the whole input into one vector. On {pairs} dates "
            "longer than any it saw in training, it gets {without_pct} exactly right; the same model with Luong "
            "attention gets {with_attention_pct}.",
            "Attention is an alignment: translating the Korean date “{korean}” into “{translation}”, each output "
            "character looks at the input characters it comes from.",
        ],
    },
    "ko": {
        "title": "7. 병목, 그리고 정렬로서의 어텐션",
        "body": [
            "어텐션 없는 인코더-디코더는 입력 전체를 벡터 하나에 담아야 합니다. 학습 때보다 긴 날짜 {pairs}개에서 "
            "정확히 맞힌 비율은 {without_pct}, 같은 모델에 Luong 어텐션을 더하면 {with_attention_pct}입니다.",
            "어텐션은 정렬입니다. 한국어 날짜 “{korean}”를 “{translation}”로 바꿀 때, 출력의 각 글자는 자신이 "
            "나온 입력 글자를 봅니다.",
        ],
    },
    "captions": {"alignment": ("the alignment of a Korean date", "한국어 날짜의 정렬")},
    "unavailable": RUNS_MISSING,
}

STEPS["beam"] = {
    "en": {
        "title": "9. Greedy against beam search",
        "body": [
            "Greedy decoding takes the most likely token at every step; beam search keeps the {beams} best "
            "partial outputs. On “{source}” greedy gives “{greedy}” (log-probability {greedy_score}); beam "
            "search's best is “{beam_best}” ({beam_best_score}), never worse than greedy's.",
        ],
    },
    "ko": {
        "title": "9. 탐욕 탐색과 빔 탐색",
        "body": [
            "탐욕 디코딩은 매 스텝 가장 그럴듯한 토큰을 고르고, 빔 탐색은 가장 좋은 부분 출력 {beams}개를 "
            "유지합니다. “{source}”에서 탐욕 탐색은 “{greedy}”(로그 확률 {greedy_score}), 빔 탐색의 최선은 "
            "“{beam_best}”({beam_best_score})로, 탐욕보다 나쁘지 않습니다.",
        ],
    },
    "captions": {},
    "unavailable": RUNS_MISSING,
}

# The words inside the figures, (English, Korean); a figure is drawn once per language (qkv.tour.figures.each_language)
FIGURES = {
    "query": ("query", "쿼리"),
    "plain": ("Q = K = V = X: softmax(X Xᵀ)", "Q = K = V = X: softmax(X Xᵀ)"),
    "learned": ("learned W_Q, W_K: softmax(QKᵀ/√d)", "학습된 W_Q, W_K: softmax(QKᵀ/√d)"),
    "dots": ("K·Q (rows: keys, columns: queries)", "K·Q (행: 키, 열: 쿼리)"),
    "pattern": ("softmax down each column: the attention pattern", "열마다 softmax: 어텐션 패턴"),
    "minilm_head": ("MiniLM layer {layer}, head {head}", "MiniLM 층 {layer}, 헤드 {head}"),
    "unscaled": ("without the scale", "나누지 않음"),
    "scaled": ("divided by √d_k", "√d_k로 나눔"),
    "saturation": ("mean largest softmax weight over {keys} keys", "키 {keys}개에 대한 softmax 최대 가중치의 평균"),
    "largest": ("largest weight", "가장 큰 가중치"),
    "heads": ("MiniLM layer {layer}: {heads} heads", "MiniLM 층 {layer}: 헤드 {heads}개"),
    "last_rows": ("layer 0, head 0: the last {rows} rows", "층 0, 헤드 0: 마지막 {rows}행"),
    "next_char": ("next character after the prompt", "프롬프트 다음 글자"),
    "probability": ("probability", "확률"),
    "bank": ("cosine of the final-layer vectors of “bank”", "“bank”의 마지막 층 벡터 코사인"),
    "scores": ("a_t(s) by score function", "점수 함수별 a_t(s)"),
    "local": (
        "decoder step {step}: weights over the source (D = {window})",
        "디코더 스텝 {step}: 소스 가중치 (D = {window})",
    ),
    "made": ("MADE: output × input", "MADE: 출력 × 입력"),
    "pixelcnn": ("PixelCNN 5×5 masks: type A (left), type B (right)", "PixelCNN 5×5 마스크: A형(왼쪽), B형(오른쪽)"),
}

# what the attention drawings write around the weights, in Korean (English: the library's defaults)
GRID_KO = {
    "panel": "층 {layer} · 헤드 {head}",
    "mean": "층 {layer} · 헤드 {heads}개의 평균",
    "axes": "행: 쿼리, 열: 키",
    "alignment_axes": "행: 출력, 열: 입력",
    "colorbar": "어텐션 가중치",
}


def figure_words(lang: str, key: str, **values: object) -> str:
    """A figure's words in ``lang``, with ``values`` filled in."""
    return FIGURES[key][LANGUAGES.index(lang)].format(**values)
